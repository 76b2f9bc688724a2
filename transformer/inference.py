"""decode.py's work: load a trained workdir, translate a split, a file or a stream, score it.

Everything needed to translate text comes from the workdir: the config it was trained with
(config.json), its vocabulary (vocabulary.model, checked against the hash in config.json) and
its checkpoints; neither the dataset nor a network is needed unless a split is asked for.
"""

import dataclasses
import io
import json
import os
import sys
import time
from typing import IO, Iterator, NamedTuple, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from transformer import attention_maps
from transformer import cli
from transformer import datasets
from transformer import input_pipeline
from transformer import models
from transformer import search as search_lib
from transformer import sharding
from transformer import tokenizer as tokenizer_lib
from transformer import translator as translator_lib
from transformer import workdir as workdir_lib


InputError = cli.UserError  # What the user gave (a file, a flag): reported without traceback.


def check_paths(input_path: Optional[str], output_path: Optional[str],
                reference_paths: Sequence[str], runs: Sequence[workdir_lib.Workdir]) -> None:
  """Refuses, before anything is loaded, an output that would destroy an input or fail late.

  Nothing the run owns (config.json, its vocabulary, checkpoints, ...) is ever an output.
  """
  for path, flag in [(input_path, '--input')] + [(p, '--reference') for p in reference_paths]:
    if path not in (None, '-') and not os.path.isfile(path):
      raise InputError(f'{flag}={path}: no such file.')
  if not output_path:
    return
  for path, flag in [(input_path, '--input')] + [(p, '--reference') for p in reference_paths]:
    if path not in (None, '-') and os.path.exists(output_path) and os.path.samefile(
        path, output_path):
      raise InputError(f'--output={output_path} is the {flag} file: writing would destroy it. '
                       'Give another --output.')
  for run in runs:
    if run.owns(output_path):
      raise InputError(f'--output={output_path} is a file of the run in {run.path}: writing '
                       'would destroy it. Give a file outside the run\'s own files.')
  folder = os.path.dirname(os.path.abspath(output_path))
  if os.path.isdir(output_path):
    raise InputError(f'--output={output_path} is a folder; give a file name.')
  if not os.path.isdir(folder):
    raise InputError(f'--output={output_path}: the folder {folder} does not exist.')
  if not os.access(folder, os.W_OK) or (os.path.exists(output_path) and
                                        not os.access(output_path, os.W_OK)):
    raise InputError(f'--output={output_path}: not writable.')


def read_lines(path: str) -> list[str]:
  """Lines of a UTF-8 text file ('-' = stdin); a non-UTF-8 line is an error naming it."""
  name = 'stdin' if path == '-' else path
  try:
    if path == '-':
      data = sys.stdin.buffer.read()
    else:
      with open(path, 'rb') as f:
        data = f.read()
  except OSError as e:
    raise InputError(f'Cannot read {name}: {e.strerror}.') from None
  lines = data.split(b'\n')
  if lines and lines[-1] == b'':
    lines.pop()
  out = []
  for number, line in enumerate(lines, 1):
    try:
      out.append(line.decode('utf-8').rstrip('\r'))
    except UnicodeDecodeError as e:
      raise InputError(f'{name}:{number}: not valid UTF-8 ({e.reason} at byte {e.start}). '
                       'Convert the file to UTF-8 first.') from None
  if not out:
    raise InputError(f'{name} is empty: nothing to translate.')
  return out


class Loaded(NamedTuple):
  """A trained run, ready to decode."""
  config: ml_collections.ConfigDict
  tokenizer: tokenizer_lib.Tokenizer
  model: models.Transformer
  variables: dict  # params (and batch_stats), replicated over the devices
  step: int
  checkpoint: str  # What was restored, in words: 'the best checkpoint (step 1200)'.


def load_trained(workdir: str | workdir_lib.Workdir, checkpoint: str = 'best') -> Loaded:
  """A trained run folder's config, vocabulary, model and variables (nothing else).

  Only the parameters and BatchNorm statistics are read from the checkpoint (orbax partial
  restore), not Adam's moments: a third of a training state's memory.
  """
  run = workdir if isinstance(workdir, workdir_lib.Workdir) else workdir_lib.Workdir(workdir)
  config = run.config()
  tokenizer = _tokenizer(run)
  model = models.make_model(config)
  replicated = sharding.replicated(sharding.make_mesh())
  abstract = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
      _abstract_variables(model, config.max_length))
  variables, step, description = run.restore_variables(checkpoint, abstract)
  logging.info('Loaded %s of %s.', description, workdir)
  return Loaded(config, tokenizer, model, variables, step, description)


def _tokenizer(run: workdir_lib.Workdir) -> tokenizer_lib.Tokenizer:
  """The run's own vocabulary; a run from before it kept one uses the dataset's."""
  tokenizer = run.tokenizer()
  if tokenizer is None:
    logging.warning('%s keeps no vocabulary of its own (trained by an older version); using '
                    "the dataset's.", run.path)
    tokenizer = input_pipeline.prepare_vocabulary(run.config())
  return tokenizer


def _abstract_variables(model: models.Transformer, length: int) -> dict:
  """The shapes and dtypes of the model's variables (params, batch_stats), computing nothing."""
  dummy = jnp.ones((1, length), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))


class Translator:
  """A trained run as a translator: text in, text out.

    translator = Translator.from_workdir('workdirs/baseline_small')
    translator.translate(['Au commencement, Dieu créa les cieux et la terre.'])
    translator.translate_nbest(['Jésus pleura.'], n=4)  # [[(text, score), ...]]

  Searches with the run's settings (beam size, length penalty) unless given others.
  """

  def __init__(self, loaded: Loaded, *, batch_size: Optional[int] = None):
    self._loaded = loaded
    self._batch = translator_lib.BatchTranslator(
        loaded.model, loaded.tokenizer, batch_size=batch_size or loaded.config.eval_batch_size)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = 'best', *,
                   batch_size: Optional[int] = None) -> 'Translator':
    """The run in `workdir` at `checkpoint` ('best', 'latest', a step, 'average:K')."""
    workdir_lib.check_checkpoint_choice(checkpoint)
    return cls(load_trained(workdir, checkpoint), batch_size=batch_size)

  @property
  def checkpoint(self) -> str:
    return self._loaded.checkpoint

  def translate(self, sentences: Sequence[str], *, beam_size: Optional[int] = None,
                length_penalty: Optional[float] = None) -> list[str]:
    """The best translation of each sentence, in order."""
    return [found[0][0] for found in self.translate_nbest(
        sentences, n=0, beam_size=beam_size, length_penalty=length_penalty)]

  def translate_nbest(self, sentences: Sequence[str], n: int, *,
                      beam_size: Optional[int] = None,
                      length_penalty: Optional[float] = None) -> list[list[tuple[str, float]]]:
    """The n best (text, score) of each sentence, best first (beam size at least n)."""
    beam = beam_size or max(n, self._loaded.config.beam_size)
    search = search_config(self._loaded.config, beam_size=beam, length_penalty=length_penalty,
                           nbest=n)
    return self._batch.translate_nbest(self._loaded.variables, list(sentences), search)


def check_ensemble(workdirs: Sequence[str]) -> None:
  """Refuses, before any checkpoint loads, run folders whose vocabularies differ.

  Compared by content (tokenizer.fingerprint), not by file bytes: the same vocabulary
  prepared twice once differed in the temporary folder it recorded.
  """
  _check_vocabularies([workdir_lib.Workdir(path) for path in workdirs])


def _check_vocabularies(runs: Sequence[workdir_lib.Workdir]) -> None:
  if not runs:
    raise InputError('Give --workdir (repeated for an ensemble) or --ensemble=DIR,DIR.')
  prints = [tokenizer_lib.fingerprint(_tokenizer(run).model_path) for run in runs]
  for run, fingerprint in zip(runs[1:], prints[1:]):
    if fingerprint != prints[0]:
      raise InputError(f'{run.path} was trained with another vocabulary than {runs[0].path} '
                       f'({fingerprint[:12]} vs {prints[0][:12]}): an ensemble needs one '
                       'vocabulary.')


def load_ensemble(runs: Sequence[workdir_lib.Workdir], checkpoint: str = 'best'):
  """(config, tokenizer, models, variables, steps, what was restored): the first run's config
  and tokenizer; check_ensemble has made sure the members share a vocabulary."""
  loaded = [load_trained(run, checkpoint) for run in runs]
  return (loaded[0].config, loaded[0].tokenizer, [m.model for m in loaded],
          [m.variables for m in loaded], [m.step for m in loaded],
          [m.checkpoint for m in loaded])


def search_overrides(*, beam_size: Optional[int] = None, nbest: int = 0,
                     max_decode_len: Optional[int] = None, sampling: Optional[str] = None,
                     seed: int = 0, no_repeat_ngram_size: int = 0,
                     min_length_ratio: Optional[float] = None,
                     max_length_ratio: Optional[float] = None) -> dict:
  """SearchConfig fields of the new search flags, each bad value refused in one line.

  Needs no checkpoint, so decode() calls it before loading any. --sampling implies beam 1;
  --max_length_ratio R replaces the config's ratio/offset rule by ceil(R * source tokens).
  """
  out = {}
  if sampling is not None:
    try:
      out['sampling'] = search_lib.Sampling.parse(sampling, seed)
    except ValueError as e:
      raise InputError(f'--sampling={sampling}: {e}') from None
    if beam_size not in (None, 1) or nbest:
      raise InputError(f'--sampling draws one output a sentence: drop --beam_size={beam_size} '
                       f'and --nbest={nbest}.')
    out['beam_size'] = 1
  if seed < 0:
    raise InputError(f'--seed={seed} must be >= 0.')
  if no_repeat_ngram_size < 0:
    raise InputError(f'--no_repeat_ngram_size={no_repeat_ngram_size} must be >= 0.')
  out['no_repeat_ngram_size'] = no_repeat_ngram_size
  if min_length_ratio is not None:
    if not min_length_ratio >= 0:
      raise InputError(f'--min_length_ratio={min_length_ratio} must be >= 0.')
    out['min_length_ratio'] = min_length_ratio
  if max_length_ratio is not None:
    if not max_length_ratio > 0:
      raise InputError(f'--max_length_ratio={max_length_ratio} must be > 0.')
    if max_decode_len is not None:
      raise InputError('--max_length_ratio and --max_decode_len both set the output length: '
                       'give one.')
    if min_length_ratio is not None and min_length_ratio > max_length_ratio:
      raise InputError(f'--min_length_ratio={min_length_ratio} is above '
                       f'--max_length_ratio={max_length_ratio}.')
    out.update(length_ratio=max_length_ratio, length_offset=0)
  return out


def search_config(config, *, beam_size: Optional[int] = None,
                  length_penalty: Optional[float] = None,
                  max_decode_len: Optional[int] = None,
                  nbest: int = 0) -> translator_lib.SearchConfig:
  """The run's search settings, with the command line's overrides."""
  search = translator_lib.SearchConfig.from_config(config, beam_size=beam_size)
  if length_penalty is not None:
    search = dataclasses.replace(search, length_penalty=length_penalty)
  return dataclasses.replace(search, max_decode_len=max_decode_len, nbest=nbest)


def _check_max_decode_len(model_config: models.ModelConfig,
                          max_decode_len: Optional[int]) -> None:
  if max_decode_len is not None and not 0 < max_decode_len <= model_config.max_len:
    raise InputError(f'--max_decode_len={max_decode_len} must be in [1, '
                     f"{model_config.max_len}] (the model's max_len).")


def cache_sizes(model_config: models.ModelConfig, batch,
                shapes: Sequence[tuple[translator_lib.SearchConfig, int, int]]) -> list[dict]:
  """KV-cache bytes (all devices together) of each (search, source bucket, decode length).

  `model_config` may be a list (an ensemble: the members' caches add up) and `batch` a
  function of the source bucket (batches by tokens).
  """
  configs = model_config if isinstance(model_config, (list, tuple)) else [model_config]
  rows = batch if callable(batch) else lambda _: batch
  return [dict(batch=rows(source_len), beam=search.beam_size, source_len=source_len,
               max_decode_len=max_decode_len,
               bytes=sum(models.cache_bytes(c, batch=rows(source_len), beam=search.beam_size,
                                            source_len=source_len,
                                            max_decode_len=max_decode_len) for c in configs))
          for search, source_len, max_decode_len in sorted(shapes, key=lambda s: s[1])]


def cache_table(workdir: str, *, beam_size: Optional[int] = None,
                max_decode_len: Optional[int] = None) -> list[dict]:
  """cache_sizes at every bucket the run's model can see, without decoding anything."""
  config = workdir_lib.Workdir(workdir).config()
  model = models.make_model(config)
  _check_max_decode_len(model.config, max_decode_len)
  search = search_config(config, beam_size=beam_size, max_decode_len=max_decode_len)
  translator = translator_lib.BatchTranslator(model, None, batch_size=config.eval_batch_size)
  buckets = sorted({translator_lib.bucket_length(n, model.config.max_len)
                    for n in translator_lib.BUCKET_LENGTHS})
  return cache_sizes(model.config, translator.batch_size,
                     [(search, n, translator.max_decode_len(search, n)) for n in buckets])


def cache_lines(rows: Sequence[dict]) -> list[str]:
  """decode.py --cache_report's lines: the KV-cache bytes of each batch shape."""
  return ['KV cache: batch {batch} x beam {beam}, source {source_len}, decoded {max_decode_len}: '
          '{bytes:,} bytes ({mib:.2f} MiB)'.format(**row, mib=row['bytes'] / 2**20)
          for row in rows]


def score_lines(result: dict) -> list[str]:
  """BLEU and chrF as `sacrebleu -f text` prints them: 'BLEU|<signature> = <score ...>'."""
  lines = []
  for name in ('bleu', 'chrf'):
    metric, rest = result[f'{name}_text'].split(' = ', 1)
    lines.append(f"{metric}|{result[f'{name}_signature']} = {rest}")
  return lines


def write_attention_maps(workdir: str, sentence: str, out_dir: str, *,
                         checkpoint: str = 'best',
                         max_decode_len: Optional[int] = None) -> list[str]:
  """Attention heatmaps of `sentence` and its greedy translation (see attention_maps)."""
  if not sentence.strip():
    raise InputError('--attention_sentence is empty.')
  workdir_lib.check_checkpoint_choice(checkpoint)
  loaded = load_trained(workdir, checkpoint)
  _check_max_decode_len(loaded.model.config, max_decode_len)
  search = search_config(loaded.config, beam_size=1, max_decode_len=max_decode_len)
  paths, _ = attention_maps.write_attention_maps(loaded.model, loaded.variables, loaded.tokenizer,
                                                 sentence, out_dir, search=search)
  logging.info('Wrote %d attention maps to %s.', len(paths), out_dir)
  return paths


def _stream_lines(stream: IO[bytes]) -> Iterator[str]:
  """Lines of a byte stream as they arrive (UTF-8, newline stripped)."""
  for number, line in enumerate(iter(stream.readline, b''), 1):
    try:
      yield line.decode('utf-8').rstrip('\n').rstrip('\r')
    except UnicodeDecodeError as e:
      raise InputError(f'stdin:{number}: not valid UTF-8 ({e.reason} at byte {e.start}).') from None


def _check_reference_lengths(paths: Sequence[str], references: Sequence[Sequence[str]],
                             num_sources: int) -> None:
  for path, stream in zip(paths, references):
    if len(stream) != num_sources:
      raise InputError(f'{path} has {len(stream)} lines for {num_sources} source sentences.')


def format_hypotheses(source: str, hypotheses: Sequence[tuple[str, float]], nbest: int) -> str:
  """One output line: the best text, or with nbest a JSON object of the n best, best first."""
  if not nbest:
    return hypotheses[0][0]
  return json.dumps({'source': source, 'hypotheses': [
      {'text': text, 'score': score} for text, score in hypotheses]}, ensure_ascii=False)


def _workdirs(workdir) -> list[str]:
  return [workdir] if isinstance(workdir, str) else list(workdir)


def _check_batching(batch_size: Optional[int], batch_tokens: Optional[int],
                    streaming: bool) -> None:
  if batch_tokens is None:
    return
  if batch_tokens < 1:
    raise InputError(f'--batch_tokens={batch_tokens} must be >= 1.')
  if batch_size is not None:
    raise InputError('--batch_size and --batch_tokens both size the batches: give one.')
  if streaming:
    raise InputError('--batch_tokens batches a file; --input=- translates one line at a time.')


def decode(workdir, *, checkpoint: str = 'best', split: Optional[str] = None,
           input_path: Optional[str] = None, output_path: Optional[str] = None,
           reference_paths: Sequence[str] = (), beam_size: Optional[int] = None,
           length_penalty: Optional[float] = None,
           max_decode_len: Optional[int] = None,
           batch_size: Optional[int] = None, nbest: int = 0,
           batch_tokens: Optional[int] = None, write_translations: bool = True,
           **search_flags) -> dict:
  """Translates `split` of the run's dataset or the lines of `input_path`; scores if it can.

  `input_path` '-' streams stdin: each line is translated as soon as it arrives and its
  translation written and flushed, so decode.py can sit behind a pipe (the model is loaded
  and each length bucket compiled once). `max_decode_len` caps every output at that many
  tokens (eos included) instead of the config's ratio/offset rule. `nbest` > 0 writes one
  JSON line per source with its n best hypotheses and their scores. The result's 'cache'
  lists the KV-cache size of each batch shape that was decoded; 'hypotheses' the best
  translations, which `write_translations=False` keeps off stdout.

  `workdir` may be a list: an ensemble (translator.py). `batch_tokens` batches by padded
  source tokens instead of sentences; `search_flags` are search_overrides' (sampling, seed,
  no_repeat_ngram_size, min_length_ratio, max_length_ratio).
  """
  if (split is None) == (input_path is None):
    raise InputError('Give exactly one of --split and --input.')
  if nbest < 0:
    raise InputError(f'--nbest={nbest} must be >= 0.')
  for flag, value, low in (('--batch_size', batch_size, 1), ('--beam_size', beam_size, 1),
                           ('--max_decode_len', max_decode_len, 1),
                           ('--length_penalty', length_penalty, 0)):
    if value is not None and not value >= low:  # `not >=`: NaN is refused too.
      raise InputError(f'{flag}={value} must be >= {low}.')
  streaming = input_path == '-'
  _check_batching(batch_size, batch_tokens, streaming)
  overrides = search_overrides(beam_size=beam_size, nbest=nbest, max_decode_len=max_decode_len,
                               **search_flags)
  workdir_lib.check_checkpoint_choice(checkpoint)
  runs = [workdir_lib.Workdir(path) for path in _workdirs(workdir)]
  check_paths(input_path, output_path, reference_paths, runs)
  # Everything the flags and config.json can tell is checked before a checkpoint loads.
  _check_vocabularies(runs)
  config = runs[0].config()
  for run in runs:
    _check_max_decode_len(models.ModelConfig.from_config(run.config().model), max_decode_len)
  try:
    search = dataclasses.replace(
        search_config(config, beam_size=beam_size, length_penalty=length_penalty,
                      max_decode_len=max_decode_len, nbest=nbest), **overrides)
  except ValueError as e:
    raise InputError(f'--nbest/--beam_size: {e}') from None
  if streaming and sys.stdin is None:
    raise InputError('--input=-: there is no standard input (it is closed); give a file.')
  references = [read_lines(path) for path in reference_paths]
  if split is not None:
    pairs = datasets.load_pairs(config, split)
    sources = [fr for fr, _ in pairs]
    if not references:
      references = [[en for _, en in pairs]]
  elif not streaming:
    sources = read_lines(input_path)
  if not streaming:
    _check_reference_lengths(reference_paths, references, len(sources))
  config, tokenizer, model, variables, step, description = load_ensemble(runs, checkpoint)
  translator = translator_lib.BatchTranslator(
      model, tokenizer, batch_size=1 if streaming else batch_size or config.eval_batch_size,
      batch_tokens=batch_tokens)
  if output_path:
    out = open(output_path, 'w', encoding='utf-8')
  else:
    out = sys.stdout if write_translations else io.StringIO()
  start = time.perf_counter()
  try:
    if streaming:
      sources, hypotheses = [], []
      for line in _stream_lines(sys.stdin.buffer):
        found = translator.translate_nbest(variables, [line], search, len(sources) + 1)[0]
        sources.append(line)
        hypotheses.append(found[0][0])
        out.write(format_hypotheses(line, found, nbest) + '\n')
        out.flush()
      if not sources:
        raise InputError('stdin is empty: nothing to translate.')
    else:
      found = translator.translate_nbest(variables, sources, search)
      hypotheses = [h[0][0] for h in found]
      out.writelines(format_hypotheses(source, h, nbest) + '\n'
                     for source, h in zip(sources, found))
  finally:
    if output_path:
      out.close()
  seconds = time.perf_counter() - start  # Compilation of each length bucket included.
  result = {'step': step[0] if len(step) == 1 else step, 'checkpoint': '; '.join(description),
            'sentences': len(sources), 'seconds': seconds, 'truncated': translator.num_truncated,
            'beam_size': search.beam_size, 'hypotheses': hypotheses,
            'cache': cache_sizes([m.config for m in model], translator.batch_rows,
                                 translator.decode_shapes)}
  if references:
    if streaming:  # Only now is the number of source lines known.
      _check_reference_lengths(reference_paths, references, len(sources))
    result.update(translator_lib.score(hypotheses, references))
    logging.info('%s\n%s', result['bleu_text'], result['chrf_text'])
  return result


def score(workdir, *, input_path: str, reference_path: str, checkpoint: str = 'best',
          output_path: Optional[str] = None, length_penalty: Optional[float] = None,
          batch_size: Optional[int] = None, batch_tokens: Optional[int] = None) -> dict:
  """Scores given translations by teacher forcing: one JSON line per (source, reference) pair.

  Each line holds the pair's log-probability (eos included), its GNMT score (log-probability
  / lp(length), what beam search ranks and --nbest prints), and each token's piece and
  log-probability. `workdir` may be a list (an ensemble). Empty source lines score nothing
  (null).
  """
  for flag, value in (('--input', input_path), ('--reference', reference_path)):
    if value in (None, '-'):
      raise InputError(f'--score needs {flag}=FILE (a file, not stdin).')
  if length_penalty is not None and not length_penalty >= 0:
    raise InputError(f'--length_penalty={length_penalty} must be >= 0.')
  if batch_size is not None and batch_size < 1:
    raise InputError(f'--batch_size={batch_size} must be >= 1.')
  _check_batching(batch_size, batch_tokens, False)
  workdir_lib.check_checkpoint_choice(checkpoint)
  runs = [workdir_lib.Workdir(path) for path in _workdirs(workdir)]
  check_paths(input_path, output_path, [reference_path], runs)
  _check_vocabularies(runs)
  sources, references = read_lines(input_path), read_lines(reference_path)
  _check_reference_lengths([reference_path], [references], len(sources))
  config, tokenizer, model, variables, step, _ = load_ensemble(runs, checkpoint)
  alpha = config.length_penalty if length_penalty is None else length_penalty
  translator = translator_lib.BatchTranslator(model, tokenizer,
                                         batch_size=batch_size or config.eval_batch_size,
                                         batch_tokens=batch_tokens)
  kept = [i for i, line in enumerate(sources) if line.strip()]
  targets = translator.encode_targets([references[i] for i in kept], [i + 1 for i in kept])
  token_scores = translator.score_ids(
      variables, translator.encode_sources([sources[i] for i in kept], [i + 1 for i in kept]),
      targets)
  rows = [dict(source=source, reference=reference, log_prob=None, score=None, tokens=[],
               token_log_probs=[]) for source, reference in zip(sources, references)]
  for i, ids, scores in zip(kept, targets, token_scores):
    total = float(sum(scores))
    rows[i].update(log_prob=total,
                   score=total / float(search_lib.length_penalty_fn(len(scores), alpha)),
                   tokens=[tokenizer.processor.id_to_piece(t) for t in ids],
                   token_log_probs=scores)
  out = open(output_path, 'w', encoding='utf-8') if output_path else sys.stdout
  try:
    out.writelines(json.dumps(row, ensure_ascii=False) + '\n' for row in rows)
  finally:
    if output_path:
      out.close()
  totals = [rows[i]['log_prob'] for i in kept]
  tokens = sum(len(rows[i]['tokens']) for i in kept)
  return {'step': step[0] if len(step) == 1 else step, 'pairs': len(kept), 'rows': rows,
          'log_prob': sum(totals), 'tokens': tokens}
