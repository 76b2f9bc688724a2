"""Translates with a trained workdir: `python decode.py --workdir=DIR --split=test`.

Or `--input=FILE` (`-` for stdin) with optional `--reference=FILE` (repeatable) to score.
BLEU and chrF are sacreBLEU's, printed with their signatures.
"""

import sys

from absl import app
from absl import flags

from transformer import decode_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_SPLIT = flags.DEFINE_string('split', None, "A split of the run's dataset, e.g. 'test'.")
_INPUT = flags.DEFINE_string('input', None, "Source text, one sentence a line ('-' = stdin).")
_OUTPUT = flags.DEFINE_string('output', None, 'Where translations go (default: stdout).')
_REFERENCE = flags.DEFINE_multi_string('reference', [], 'Reference file(s) to score against.')
_BEAM_SIZE = flags.DEFINE_integer('beam_size', None, "Beam width (1 = greedy); default: config's.")
_LENGTH_PENALTY = flags.DEFINE_float('length_penalty', None, 'GNMT length penalty alpha.')
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = decode_lib.decode(
      _WORKDIR.value, checkpoint=_CHECKPOINT.value, split=_SPLIT.value, input_path=_INPUT.value,
      output_path=_OUTPUT.value, reference_paths=_REFERENCE.value, beam_size=_BEAM_SIZE.value,
      length_penalty=_LENGTH_PENALTY.value)
  if 'bleu' in result:  # Scores go to stderr: stdout may be carrying the translations.
    for name in ('bleu', 'chrf'):
      print(result[f'{name}_text'], result[f'{name}_signature'], sep='\n  ', file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
