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
from transformer import sharding
from transformer import tokenizer as tokenizer_lib
from transformer import translator as translator_lib
from transformer import workdir as workdir_lib


InputError = cli.UserError  # What the user gave (a file, a flag): reported without traceback.


def check_paths(input_path: Optional[str], output_path: Optional[str],
                reference_paths: Sequence[str], run: workdir_lib.Workdir) -> None:
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


class Loaded(NamedTuple):
  """A trained run, ready to decode."""
  config: ml_collections.ConfigDict
  tokenizer: tokenizer_lib.Tokenizer
  model: models.Transformer
  variables: dict  # params (and batch_stats), replicated over the devices
  step: int
  checkpoint: str  # What was restored, in words: 'the best checkpoint (step 1200)'.


def load_trained(workdir: str, checkpoint: str = 'best') -> Loaded:
  """A trained run folder's config, vocabulary, model and variables (nothing else).

  Only the parameters and BatchNorm statistics are read from the checkpoint (orbax partial
  restore), not Adam's moments: a third of a training state's memory.
  """
  run = workdir_lib.Workdir(workdir)
  config = run.config()
  tokenizer = run.tokenizer()
  if tokenizer is None:
    logging.warning('%s keeps no vocabulary of its own (trained by an older version); using '
                    "the dataset's.", workdir)
    tokenizer = input_pipeline.prepare_vocabulary(config)
  model = models.make_model(config)
  replicated = sharding.replicated(sharding.make_mesh())
  abstract = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
      _abstract_variables(model, config.max_length))
  variables, step, description = run.restore_variables(checkpoint, abstract)
  logging.info('Loaded %s of %s.', description, workdir)
  return Loaded(config, tokenizer, model, variables, step, description)


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


def cache_sizes(model_config: models.ModelConfig, batch: int,
                shapes: Sequence[tuple[translator_lib.SearchConfig, int, int]]) -> list[dict]:
  """KV-cache bytes (all devices together) of each (search, source bucket, decode length)."""
  return [dict(batch=batch, beam=search.beam_size, source_len=source_len,
               max_decode_len=max_decode_len,
               bytes=models.cache_bytes(model_config, batch=batch, beam=search.beam_size,
                                        source_len=source_len, max_decode_len=max_decode_len))
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


def decode(workdir: str, *, checkpoint: str = 'best', split: Optional[str] = None,
           input_path: Optional[str] = None, output_path: Optional[str] = None,
           reference_paths: Sequence[str] = (), beam_size: Optional[int] = None,
           length_penalty: Optional[float] = None,
           max_decode_len: Optional[int] = None,
           batch_size: Optional[int] = None, nbest: int = 0,
           write_translations: bool = True) -> dict:
  """Translates `split` of the run's dataset or the lines of `input_path`; scores if it can.

  `input_path` '-' streams stdin: each line is translated as soon as it arrives and its
  translation written and flushed, so decode.py can sit behind a pipe (the model is loaded
  and each length bucket compiled once). `max_decode_len` caps every output at that many
  tokens (eos included) instead of the config's ratio/offset rule. `nbest` > 0 writes one
  JSON line per source with its n best hypotheses and their scores. The result's 'cache'
  lists the KV-cache size of each batch shape that was decoded; 'hypotheses' the best
  translations, which `write_translations=False` keeps off stdout.
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
  workdir_lib.check_checkpoint_choice(checkpoint)
  run = workdir_lib.Workdir(workdir)
  check_paths(input_path, output_path, reference_paths, run)
  # Everything the flags and config.json can tell is checked before the checkpoint loads.
  config = run.config()
  _check_max_decode_len(models.ModelConfig.from_config(config.model), max_decode_len)
  try:
    search = search_config(config, beam_size=beam_size, length_penalty=length_penalty,
                           max_decode_len=max_decode_len, nbest=nbest)
  except ValueError as e:
    raise InputError(f'--nbest/--beam_size: {e}') from None
  streaming = input_path == '-'
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
  _, tokenizer, model, variables, step, description = load_trained(workdir, checkpoint)
  translator = translator_lib.BatchTranslator(
      model, tokenizer, batch_size=1 if streaming else batch_size or config.eval_batch_size)
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
  result = {'step': step, 'checkpoint': description, 'sentences': len(sources),
            'seconds': seconds,
            'truncated': translator.num_truncated,
            'beam_size': search.beam_size, 'hypotheses': hypotheses,
            'cache': cache_sizes(model.config, translator.batch_size, translator.decode_shapes)}
  if references:
    if streaming:  # Only now is the number of source lines known.
      _check_reference_lengths(reference_paths, references, len(sources))
    result.update(translator_lib.score(hypotheses, references))
    logging.info('%s\n%s', result['bleu_text'], result['chrf_text'])
  return result
