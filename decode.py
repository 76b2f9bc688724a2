"""Translates with a trained workdir: `python decode.py --workdir=DIR --split=test`.

`--input=FILE` (`-`: stdin, line by line) with `--reference=FILE` to score (sacreBLEU's BLEU
and chrF on stderr); `--nbest=N`; `--workdir` repeated or `--ensemble=A,B` for an ensemble;
`--score` for teacher-forced log-probabilities of given translations; `--sampling`,
`--no_repeat_ngram_size`, length ratios; `--attention_dir` and `--cache_report` (README).
"""

import sys

from absl import flags

from transformer import inference
from transformer import cli

_WORKDIR = flags.DEFINE_multi_string('workdir', [], 'A training workdir; repeat for an ensemble.')
_ENSEMBLE = flags.DEFINE_list('ensemble', [], 'Workdirs decoded as one ensemble: DIR,DIR,...')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest', a step, or 'average:K' "
                                  '(the mean of the last K saved).')
_SPLIT = flags.DEFINE_string('split', None, "A split of the run's dataset, e.g. 'test'.")
_INPUT = flags.DEFINE_string('input', None, "Source text, one sentence a line ('-' = stdin).")
_OUTPUT = flags.DEFINE_string('output', None, 'Where translations go (default: stdout).')
_REFERENCE = flags.DEFINE_multi_string('reference', [], 'Reference file(s) to score against.')
_BEAM_SIZE = flags.DEFINE_integer('beam_size', None, "Beam width (1 = greedy); default: config's.")
_LENGTH_PENALTY = flags.DEFINE_float('length_penalty', None, 'GNMT length penalty alpha.')
_MAX_DECODE_LEN = flags.DEFINE_integer(
    'max_decode_len', None, 'Output tokens cap (eos included); replaces the ratio/offset rule.')
_ATTENTION_DIR = flags.DEFINE_string('attention_dir', None, 'Write attention maps (PNG) here.')
_ATTENTION_SENTENCE = flags.DEFINE_string('attention_sentence', None, 'Whose attention to draw.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, "Sentences a batch; default: the config's.")
_BATCH_TOKENS = flags.DEFINE_integer('batch_tokens', None, 'Batch by padded source tokens.')
_CACHE_REPORT = flags.DEFINE_bool('cache_report', False, 'Print the KV-cache bytes.')
_NBEST = flags.DEFINE_integer('nbest', 0, 'Write JSON lines of the N best (N <= beam size).',
                             lower_bound=0)
_SAMPLING = flags.DEFINE_string('sampling', None, 'temperature:T, top_k:K or top_p:P (or a,b).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed of --sampling.')
_NO_REPEAT = flags.DEFINE_integer('no_repeat_ngram_size', 0, 'No n-gram output twice (0 = off).')
_MIN_RATIO = flags.DEFINE_float('min_length_ratio', None, 'Min output tokens / source tokens.')
_MAX_RATIO = flags.DEFINE_float('max_length_ratio', None, 'Max output tokens / source tokens.')
_SCORE = flags.DEFINE_bool('score', False, 'Score --input against one --reference instead.')


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'Unexpected arguments: {argv[1:]}')
  workdirs = _WORKDIR.value + _ENSEMBLE.value
  if (_ATTENTION_DIR.value is None) != (_ATTENTION_SENTENCE.value is None):
    raise cli.UserError('--attention_dir and --attention_sentence go together.')
  translating = _SPLIT.value is not None or _INPUT.value is not None
  if not (translating or _ATTENTION_DIR.value or _CACHE_REPORT.value):
    raise cli.UserError('Give --split or --input (or --attention_dir, --cache_report).')
  if len(workdirs) > 1 and (_ATTENTION_DIR.value or _CACHE_REPORT.value and not translating):
    raise cli.UserError('--attention_dir and --cache_report alone read one --workdir.')
  if _SCORE.value:
    if len(_REFERENCE.value) != 1 or _SPLIT.value or _NBEST.value or _SAMPLING.value:
      raise cli.UserError('--score takes --input=F and one --reference=R (no --split, --nbest, '
                          '--sampling).')
    result = inference.score(
        workdirs, input_path=_INPUT.value, reference_path=_REFERENCE.value[0],
        checkpoint=_CHECKPOINT.value, output_path=_OUTPUT.value,
        length_penalty=_LENGTH_PENALTY.value, batch_size=_BATCH_SIZE.value,
        batch_tokens=_BATCH_TOKENS.value)
    print(f"Scored {result['pairs']:,} pairs: {result['log_prob'] / result['tokens']:.4f} "
          'log-probability a token.', file=sys.stderr)
    return
  search_flags = dict(sampling=_SAMPLING.value, seed=_SEED.value,
                      no_repeat_ngram_size=_NO_REPEAT.value, min_length_ratio=_MIN_RATIO.value,
                      max_length_ratio=_MAX_RATIO.value)
  inference.search_overrides(beam_size=_BEAM_SIZE.value, nbest=_NBEST.value,
                             max_decode_len=_MAX_DECODE_LEN.value, **search_flags)
  inference.check_ensemble(workdirs)  # Both before any checkpoint loads.
  if _ATTENTION_DIR.value:
    inference.write_attention_maps(
        workdirs[0], _ATTENTION_SENTENCE.value, _ATTENTION_DIR.value,
        checkpoint=_CHECKPOINT.value, max_decode_len=_MAX_DECODE_LEN.value)
  if translating:
    result = inference.decode(
        workdirs, checkpoint=_CHECKPOINT.value, split=_SPLIT.value,
        input_path=_INPUT.value, output_path=_OUTPUT.value, reference_paths=_REFERENCE.value,
        beam_size=_BEAM_SIZE.value, length_penalty=_LENGTH_PENALTY.value,
        max_decode_len=_MAX_DECODE_LEN.value, batch_size=_BATCH_SIZE.value,
        nbest=_NBEST.value, batch_tokens=_BATCH_TOKENS.value, **search_flags)
    print(f"Translated {result['sentences']:,} sentences with {result['checkpoint']} in "
          f"{result['seconds']:.1f} s (compilation included).", file=sys.stderr)
    if 'bleu' in result:  # Scores go to stderr: stdout may be carrying the translations.
      print(*inference.score_lines(result), sep='\n', file=sys.stderr)
    cache = result['cache']
  elif _CACHE_REPORT.value:
    cache = inference.cache_table(workdirs[0], beam_size=_BEAM_SIZE.value,
                                  max_decode_len=_MAX_DECODE_LEN.value)
  if _CACHE_REPORT.value:
    print(*inference.cache_lines(cache), sep='\n', file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
