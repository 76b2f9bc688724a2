"""Text in, text out: batching, bucketing and scoring around the search in search.py.

Shared by train-time validation BLEU (training.Validation) and decode.py, so both measure
the same thing.
Sentences are sorted by length into a few fixed bucket lengths, so a batch's shape (and
with it the compiled program) depends only on its bucket, never on its sentences; the
translations come back in input order.
"""

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import numpy as np
import sacrebleu

from transformer import models
from transformer import search as search_lib
from transformer import sharding

AXIS = sharding.AXIS
BUCKET_LENGTHS = (16, 32, 64, 128, 256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """How to search: beam_size 1 is greedy."""
  beam_size: int = 1
  length_penalty: float = 0.6
  length_ratio: float = 1.5  # Max output tokens = ratio * source tokens + offset.
  length_offset: int = 10
  # An absolute cap on output tokens (eos included) that replaces the ratio/offset rule.
  max_decode_len: Optional[int] = None
  # Hypotheses returned per sentence with their scores (beam search's best first); 0 = only
  # the best one's text. At most beam_size; beam_size 1 is then a beam search of width 1.
  nbest: int = 0

  def __post_init__(self):
    if self.beam_size < 1:
      raise ValueError(f'beam_size must be at least 1, got {self.beam_size}.')
    if not 0 <= self.nbest <= self.beam_size:
      raise ValueError(f'nbest={self.nbest} must be in [0, beam_size={self.beam_size}].')

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, beam_size: Optional[int] = None):
    return cls(beam_size=config.beam_size if beam_size is None else beam_size,
               length_penalty=config.length_penalty, length_ratio=config.decode_length_ratio,
               length_offset=config.decode_length_offset)


def score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
  """Corpus BLEU and chrF with sacreBLEU's defaults, and their signatures.

  `references` is a list of reference streams, each as long as `hypotheses`.
  """
  for stream in references:
    if len(stream) != len(hypotheses):
      raise ValueError(f'{len(hypotheses)} hypotheses but a reference stream of {len(stream)}.')
  bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
  bleu_score = bleu.corpus_score(list(hypotheses), [list(r) for r in references])
  chrf_score = chrf.corpus_score(list(hypotheses), [list(r) for r in references])
  return {'bleu': bleu_score.score, 'chrf': chrf_score.score,
          'bleu_text': str(bleu_score), 'chrf_text': str(chrf_score),
          'bleu_signature': str(bleu.get_signature()),
          'chrf_signature': str(chrf.get_signature())}


def bucket_length(num_tokens: int, max_len: int) -> int:
  """The smallest bucket that holds `num_tokens` (capped at the model's max_len)."""
  for length in BUCKET_LENGTHS:
    if length >= num_tokens:
      return min(length, max_len)
  return max_len


class BatchTranslator:
  """Translates lists of sentences with a model's KV-cached decoder."""

  def __init__(self, model, tokenizer, *, batch_size: int, mesh: Optional[Mesh] = None):
    self._model = model
    self._tokenizer = tokenizer
    self._mesh = mesh if mesh is not None else sharding.make_mesh()
    devices = self._mesh.devices.size
    self._batch_size = max(devices, batch_size // devices * devices)
    self._compiled = {}
    self.num_truncated = 0

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def decode_shapes(self) -> list[tuple[SearchConfig, int, int]]:
    """(search, source bucket, max_decode_len) of every program compiled so far."""
    return [(search, source_len, self.max_decode_len(search, source_len))
            for search, source_len in self._compiled]

  def max_decode_len(self, search: SearchConfig, source_len: int) -> int:
    """Output positions of a bucket: the ratio/offset rule or the absolute cap, <= max_len."""
    max_len = self._model.config.max_len
    if search.max_decode_len is not None:
      if not 0 < search.max_decode_len <= max_len:
        raise ValueError(f'max_decode_len={search.max_decode_len} must be in [1, {max_len}] '
                         "(the model's max_len).")
      return search.max_decode_len
    return min(math.ceil(search.length_ratio * source_len + search.length_offset), max_len)

  def _decode_fn(self, search: SearchConfig, source_len: int):
    key = (search, source_len)
    if key not in self._compiled:
      max_decode_len = self.max_decode_len(search, source_len)
      per_device = functools.partial(_decode_batch, model=self._model, search=search,
                                     max_decode_len=max_decode_len)
      # Decoding has no collectives; check_vma=False lets the search's while_loop start
      # from unvarying zeros and carry per-device values without pcasts in search.py.
      self._compiled[key] = jax.jit(jax.shard_map(
          per_device, mesh=self._mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
          check_vma=False))
    return self._compiled[key]

  def encode_sources(self, sentences: Sequence[str],
                     line_numbers: Optional[Sequence[int]] = None) -> list[list[int]]:
    """Source token ids (with eos); too long a sentence is cut with a warning.

    `line_numbers` (1-based, default 1, 2, ...) name the input lines in that warning.
    """
    max_len = self._model.config.max_len
    if line_numbers is None:
      line_numbers = range(1, len(sentences) + 1)
    encoded = []
    for line, sentence in zip(line_numbers, sentences):
      ids = self._tokenizer.encode(sentence) + [self._tokenizer.eos_id]
      if len(ids) > max_len:
        logging.warning('Input line %d has %d tokens; the model reads at most %d: truncated.',
                        line, len(ids), max_len)
        self.num_truncated += 1
        ids = ids[:max_len - 1] + [self._tokenizer.eos_id]
      encoded.append(ids)
    return encoded

  def translate_ids(self, variables, sources: Sequence[Sequence[int]],
                    search: SearchConfig) -> list[list[int]]:
    """Output token ids (without eos) for each source, in input order."""
    return [hypotheses[0][0] for hypotheses in self.search_ids(variables, sources, search)]

  def search_ids(self, variables, sources: Sequence[Sequence[int]],
                 search: SearchConfig) -> list[list[tuple[list[int], float]]]:
    """max(nbest, 1) (ids without eos, score) per source, best first, in input order.

    The score is beam search's: sum of log-probabilities / GNMT length penalty (0.0 for
    greedy search, which returns no score).
    """
    max_len = self._model.config.max_len
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs: list[Optional[list[tuple[list[int], float]]]] = [None] * len(sources)
    start = 0
    while start < len(order):
      bucket = bucket_length(len(sources[order[start]]), max_len)
      chunk = [i for i in order[start:start + self._batch_size]
               if len(sources[i]) <= bucket]
      rows = np.zeros((self._batch_size, bucket), np.int32)
      for row, i in enumerate(chunk):
        rows[row, :len(sources[i])] = sources[i]
      tokens, scores = self._run(self._decode_fn(search, bucket), variables, rows)
      for row, i in enumerate(chunk):
        outputs[i] = [(_strip(t, self._tokenizer.eos_id), float(s))
                      for t, s in zip(tokens[row], scores[row]) if s > -np.inf]
      start += len(chunk)
    return outputs

  def _run(self, fn, variables, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs a decode on this process's share of `rows`; every process gets all outputs."""
    per_process = rows.shape[0] // jax.process_count()
    local = rows[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
    batch = jax.make_array_from_process_local_data(sharding.batch_sharded(self._mesh), local)
    outputs = fn(variables, batch)
    if jax.process_count() > 1:
      outputs = multihost_utils.process_allgather(outputs, tiled=True)
    return jax.tree.map(np.asarray, outputs)

  def translate(self, variables, sentences: Sequence[str], search: SearchConfig) -> list[str]:
    """Detokenized translations; an empty input line gives an empty output line."""
    return [hypotheses[0][0] for hypotheses in self.translate_nbest(variables, sentences, search)]

  def translate_nbest(self, variables, sentences: Sequence[str], search: SearchConfig,
                      first_line: int = 1) -> list[list[tuple[str, float]]]:
    """max(search.nbest, 1) (text, score) per sentence, best first (see search_ids).

    An empty input line gives one empty hypothesis scored 0. `first_line` numbers the
    sentences in warnings.
    """
    nonempty = [i for i, s in enumerate(sentences) if s.strip()]
    sources = self.encode_sources([sentences[i] for i in nonempty],
                                  [first_line + i for i in nonempty])
    found = self.search_ids(variables, sources, search)
    out = [[('', 0.0)] for _ in sentences]
    for i, hypotheses in zip(nonempty, found):
      out[i] = [(self._tokenizer.decode(ids), score) for ids, score in hypotheses]
    return out


def _strip(tokens: np.ndarray, eos_id: int) -> list[int]:
  """Token ids up to (not including) the first eos; padding dropped."""
  out = []
  for token in tokens.tolist():
    if token == eos_id:
      break
    if token:
      out.append(token)
  return out


def _decode_batch(variables, inputs, *, model, search: SearchConfig, max_decode_len: int):
  """One device's batch: encode once, then greedy or beam search over the KV cache.

  Returns (tokens [batch, n, max_decode_len], scores [batch, n]) of the n = max(nbest, 1)
  best hypotheses of each sentence.
  """
  batch_size = inputs.shape[0]
  fixed, cache = models.split_fixed_cache(
      model.apply(variables, inputs, max_decode_len, method=model.init_cache))
  if search.beam_size > 1 or search.nbest:  # Beam search's rows: each sentence beam_size times.
    fixed = jax.tree.map(lambda x: search_lib.flatten_beam_dim(
        search_lib.add_beam_dim(x, search.beam_size)), fixed)
  if search.max_decode_len is None:
    source_lengths = jnp.sum(inputs > 0, axis=1)
    max_lengths = jnp.minimum(
        jnp.ceil(search.length_ratio * source_lengths + search.length_offset).astype(jnp.int32),
        max_decode_len)
  else:  # The cap replaces the per-sentence rule: every sentence gets max_decode_len.
    max_lengths = None

  def step_fn(tokens, cache):
    logits, cache = model.apply(variables, models.merge_fixed_cache(fixed, cache), tokens,
                                method=model.decode_step)
    # Id 0 is padding (and the decoder's BOS), never an output: a 0 fed back mid-sentence
    # would be a token the model never saw in training, and is stripped from the text.
    return logits.at[:, 0].set(-jnp.inf), models.split_fixed_cache(cache)[1]

  if search.beam_size == 1 and not search.nbest:
    tokens = search_lib.greedy_search(step_fn, cache, batch_size=batch_size,
                                      max_decode_len=max_decode_len, max_lengths=max_lengths)
    return tokens[:, None], jnp.zeros((batch_size, 1), jnp.float32)
  sequences, scores = search_lib.beam_search(
      step_fn, cache, batch_size=batch_size, beam_size=search.beam_size,
      max_decode_len=max_decode_len, max_lengths=max_lengths,
      length_penalty=search.length_penalty)
  keep = max(search.nbest, 1)  # [batch, keep, max_decode_len], [batch, keep]
  return sequences[:, :keep], scores[:, :keep]
