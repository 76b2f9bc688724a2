"""decode.py's work: load a trained workdir, translate a split or a file, score it.

Everything needed comes from the workdir: the config it was trained with (config.json), its
vocabulary, and its checkpoints.
"""

import dataclasses
import functools
import sys
import time
from typing import Optional, Sequence

from absl import logging
import jax

from transformer import attention_maps
from transformer import checkpoints
from transformer import input_pipeline
from transformer import models
from transformer import optim
from transformer import train_lib
from transformer import translate


class InputError(ValueError):
  """A problem with what the user gave (a file, a flag), reported without a traceback."""


def read_lines(path: str) -> list[str]:
  """Lines of a UTF-8 text file ('-' = stdin); a non-UTF-8 line is an error naming it."""
  name = 'stdin' if path == '-' else path
  try:
    data = sys.stdin.buffer.read() if path == '-' else open(path, 'rb').read()
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


def search_config(config, *, beam_size: Optional[int] = None,
                  length_penalty: Optional[float] = None,
                  max_decode_len: Optional[int] = None) -> translate.SearchConfig:
  """The run's search settings, with the command line's overrides."""
  search = translate.SearchConfig.from_config(config, beam_size=beam_size)
  if length_penalty is not None:
    search = dataclasses.replace(search, length_penalty=length_penalty)
  return dataclasses.replace(search, max_decode_len=max_decode_len)


def _check_max_decode_len(model, max_decode_len: Optional[int]) -> None:
  if max_decode_len is not None and not 0 < max_decode_len <= model.config.max_len:
    raise InputError(f'--max_decode_len={max_decode_len} must be in [1, '
                     f"{model.config.max_len}] (the model's max_len).")


def cache_sizes(model_config: models.ModelConfig, batch: int,
                shapes: Sequence[tuple[translate.SearchConfig, int, int]]) -> list[dict]:
  """KV-cache bytes (all devices together) of each (search, source bucket, decode length)."""
  return [dict(batch=batch, beam=search.beam_size, source_len=source_len,
               max_decode_len=max_decode_len,
               bytes=models.cache_bytes(model_config, batch=batch, beam=search.beam_size,
                                        source_len=source_len, max_decode_len=max_decode_len))
          for search, source_len, max_decode_len in sorted(shapes, key=lambda s: s[1])]


def cache_table(workdir: str, *, beam_size: Optional[int] = None,
                max_decode_len: Optional[int] = None) -> list[dict]:
  """cache_sizes at every bucket the run's model can see, without decoding anything."""
  config = checkpoints.load_config(workdir)
  model = train_lib.make_model(config)
  _check_max_decode_len(model, max_decode_len)
  search = search_config(config, beam_size=beam_size, max_decode_len=max_decode_len)
  translator = translate.Translator(model, None, batch_size=config.eval_batch_size)
  buckets = sorted({translate.bucket_length(n, model.config.max_len)
                    for n in translate.BUCKET_LENGTHS})
  return cache_sizes(model.config, translator.batch_size,
                     [(search, n, translator.max_decode_len(search, n)) for n in buckets])


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
  config, tokenizer, model, variables, _ = load_trained(workdir, checkpoint)
  _check_max_decode_len(model, max_decode_len)
  search = search_config(config, beam_size=1, max_decode_len=max_decode_len)
  paths, _ = attention_maps.write_attention_maps(model, variables, tokenizer, sentence, out_dir,
                                                 search=search)
  logging.info('Wrote %d attention maps to %s.', len(paths), out_dir)
  return paths


def decode(workdir: str, *, checkpoint: str = 'best', split: Optional[str] = None,
           input_path: Optional[str] = None, output_path: Optional[str] = None,
           reference_paths: Sequence[str] = (), beam_size: Optional[int] = None,
           length_penalty: Optional[float] = None,
           max_decode_len: Optional[int] = None,
           batch_size: Optional[int] = None) -> dict:
  """Translates `split` of the run's dataset or the lines of `input_path`; scores if it can.

  `max_decode_len` caps every output at that many tokens (eos included) instead of the
  config's ratio/offset rule. The result's 'cache' lists the KV-cache size of each batch
  shape that was decoded.
  """
  if (split is None) == (input_path is None):
    raise InputError('Give exactly one of --split and --input.')
  config, tokenizer, model, variables, step = load_trained(workdir, checkpoint)
  references = [read_lines(path) for path in reference_paths]
  if split is not None:
    pairs = input_pipeline.load_pairs(config, split)
    sources = [fr for fr, _ in pairs]
    if not references:
      references = [[en for _, en in pairs]]
  else:
    sources = read_lines(input_path)
  for path, stream in zip(reference_paths, references):
    if len(stream) != len(sources):
      raise InputError(f'{path} has {len(stream)} lines for {len(sources)} source sentences.')
  _check_max_decode_len(model, max_decode_len)
  search = search_config(config, beam_size=beam_size, length_penalty=length_penalty,
                         max_decode_len=max_decode_len)
  translator = translate.Translator(model, tokenizer,
                                    batch_size=batch_size or config.eval_batch_size)
  start = time.perf_counter()
  hypotheses = translator.translate(variables, sources, search)
  seconds = time.perf_counter() - start  # Compilation of each length bucket included.
  if output_path:
    with open(output_path, 'w', encoding='utf-8') as f:
      f.writelines(h + '\n' for h in hypotheses)
  else:
    sys.stdout.writelines(h + '\n' for h in hypotheses)
  logging.info('Translated %d sentences in %.1f s (beam %d, compilation included).',
               len(sources), seconds, search.beam_size)
  result = {'step': step, 'sentences': len(sources), 'seconds': seconds,
            'truncated': translator.num_truncated,
            'beam_size': search.beam_size, 'hypotheses': hypotheses,
            'cache': cache_sizes(model.config, translator.batch_size, translator.decode_shapes)}
  if references:
    result.update(translate.score(hypotheses, references))
    logging.info('%s\n%s', result['bleu_text'], result['chrf_text'])
  return result
