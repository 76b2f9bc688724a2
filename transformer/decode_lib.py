"""decode.py's work: load a trained workdir, translate a split or a file, score it.

Everything needed comes from the workdir: the config it was trained with (config.json), its
vocabulary, and its checkpoints.
"""

import functools
import os
import sys
from typing import Optional, Sequence

from absl import logging
import jax
import ml_collections

from transformer import checkpoints
from transformer import input_pipeline
from transformer import optim
from transformer import train_lib
from transformer import translate


def read_lines(path: str) -> list[str]:
  """Lines of a UTF-8 text file ('-' = stdin); a non-UTF-8 line is an error naming it."""
  data = sys.stdin.buffer.read() if path == '-' else open(path, 'rb').read()
  lines = data.split(b'\n')
  if lines and lines[-1] == b'':
    lines.pop()
  out = []
  for number, line in enumerate(lines, 1):
    try:
      out.append(line.decode('utf-8').rstrip('\r'))
    except UnicodeDecodeError as e:
      raise ValueError(f'{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start}). '
                       'Convert the file to UTF-8 first.') from None
  if not out:
    raise ValueError(f'{path} is empty: nothing to translate.')
  return out


def load_trained(workdir: str, checkpoint: str = 'best'):
  """(config, tokenizer, model, variables, step) of a trained workdir."""
  config = checkpoints.load_config(workdir)
  tokenizer = input_pipeline.prepare(config)
  model = train_lib.make_model(config)
  tx = optim.make_optimizer(config)
  abstract = jax.eval_shape(functools.partial(
      train_lib.init_state, config, model, tx, (1, config.max_length)))
  state, step = checkpoints.restore_params(workdir, checkpoint, abstract)
  logging.info('Loaded the %s checkpoint of %s (step %d).', checkpoint, workdir, step)
  return config, tokenizer, model, translate.model_variables(state), step


def decode(workdir: str, *, checkpoint: str = 'best', split: Optional[str] = None,
           input_path: Optional[str] = None, output_path: Optional[str] = None,
           reference_paths: Sequence[str] = (), beam_size: Optional[int] = None,
           length_penalty: Optional[float] = None) -> dict:
  """Translates `split` of the run's dataset or the lines of `input_path`; scores if it can."""
  if (split is None) == (input_path is None):
    raise ValueError('Give exactly one of --split and --input.')
  config, tokenizer, model, variables, step = load_trained(workdir, checkpoint)
  references = [read_lines(path) for path in reference_paths]
  if split is not None:
    pairs = input_pipeline.load_pairs(config, split)
    sources = [fr for fr, _ in pairs]
    if not references:
      references = [[en for _, en in pairs]]
  else:
    sources = read_lines(input_path)
  search = translate.SearchConfig.from_config(config, beam_size=beam_size)
  if length_penalty is not None:
    search = search.__class__(**{**search.__dict__, 'length_penalty': length_penalty})
  translator = translate.Translator(model, tokenizer, batch_size=config.eval_batch_size)
  hypotheses = translator.translate(variables, sources, search)
  if output_path:
    with open(output_path, 'w', encoding='utf-8') as f:
      f.writelines(h + '\n' for h in hypotheses)
  else:
    sys.stdout.writelines(h + '\n' for h in hypotheses)
  result = {'step': step, 'sentences': len(sources), 'truncated': translator.num_truncated,
            'beam_size': search.beam_size, 'hypotheses': hypotheses}
  if references:
    result.update(translate.score(hypotheses, references))
    logging.info('%s\n%s', result['bleu_text'], result['chrf_text'])
  return result
