"""Text in, text out: batching, bucketing and scoring around the search in search.py.

Shared by train-time validation BLEU (training.Validation) and decode.py, so both measure
the same thing.
Sentences are sorted by length into a few fixed bucket lengths, so a batch's shape (and
with it the compiled program) depends only on its bucket, never on its sentences; the
translations come back in input order. A batch holds a fixed number of sentences, or with
`batch_tokens` as many as fit that many (padded) source tokens, so short sentences travel in
large batches and long ones in small.

Several models over one vocabulary decode as an ensemble: at each step the search sees the
mean of their log-probabilities, renormalized (a product of experts, as Marian's ensembles;
fairseq averages probabilities instead). Teacher-forced scoring uses the same distribution,
so `score_ids` gives what beam search scored.
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

from transformer import cli
from transformer import models as models_lib
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
  # Min output tokens (eos included) = ceil(ratio * source tokens), at most the maximum.
  min_length_ratio: float = 0.0
  no_repeat_ngram_size: int = 0  # n > 0: no n-gram of output tokens occurs twice.
  sampling: Optional[search_lib.Sampling] = None  # Sample instead of greedy (beam_size 1).

  def __post_init__(self):
    if self.beam_size < 1:
      raise ValueError(f'beam_size must be at least 1, got {self.beam_size}.')
    if not 0 <= self.nbest <= self.beam_size:
      raise ValueError(f'nbest={self.nbest} must be in [0, beam_size={self.beam_size}].')
    if self.min_length_ratio < 0:
      raise ValueError(f'min_length_ratio={self.min_length_ratio} must be >= 0.')
    if self.no_repeat_ngram_size < 0:
      raise ValueError(f'no_repeat_ngram_size={self.no_repeat_ngram_size} must be >= 0.')
    if self.sampling is not None and (self.beam_size > 1 or self.nbest):
      raise ValueError(f'sampling draws one output a sentence: it needs beam_size 1 and no '
                       f'nbest (got beam_size={self.beam_size}, nbest={self.nbest}).')

  @property
  def greedy(self) -> bool:
    """One output a sentence by greedy search or sampling, not a beam."""
    return self.beam_size == 1 and not self.nbest

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


class NonFiniteScores(cli.UserError):
  """Beam search found no hypothesis with a finite score: the parameters, not the input."""


def bucket_length(num_tokens: int, max_len: int) -> int:
  """The smallest bucket that holds `num_tokens` (capped at the model's max_len)."""
  for length in BUCKET_LENGTHS:
    if length >= num_tokens:
      return min(length, max_len)
  return max_len


def members(variables) -> tuple:
  """An ensemble's variables as a tuple; one model's variables are an ensemble of one."""
  return tuple(variables) if isinstance(variables, (list, tuple)) else (variables,)


class BatchTranslator:
  """Translates lists of sentences with a model's (or an ensemble's) KV-cached decoder.

  `model` is one model or a sequence of models over one vocabulary; the `variables` given to
  each method are then one variables dict or a sequence, in the same order.
  """

  def __init__(self, model, tokenizer, *, batch_size: int, mesh: Optional[Mesh] = None,
               batch_tokens: Optional[int] = None):
    self._models = members(model)
    self._model = self._models[0]
    self._max_len = min(m.config.max_len for m in self._models)
    self._tokenizer = tokenizer
    self._mesh = mesh if mesh is not None else sharding.make_mesh()
    devices = self._mesh.devices.size
    self._batch_size = max(devices, batch_size // devices * devices)
    self._batch_tokens = batch_tokens
    self._compiled = {}
    self.num_truncated = 0

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def models(self) -> tuple:
    return self._models

  def batch_rows(self, length: int) -> int:
    """Sentences in a batch whose rows are `length` long: batch_size, or by batch_tokens.

    With batch_tokens, rows * length (the padded source tokens) stays within it, rounded
    down to a multiple of the devices and at least one row a device.
    """
    if not self._batch_tokens:
      return self._batch_size
    devices = self._mesh.devices.size
    return max(devices, self._batch_tokens // length // devices * devices)

  @property
  def decode_shapes(self) -> list[tuple[SearchConfig, int, int]]:
    """(search, source bucket, max_decode_len) of every program compiled so far."""
    return [(search, source_len, self.max_decode_len(search, source_len))
            for search, source_len in self._compiled]

  def max_decode_len(self, search: SearchConfig, source_len: int) -> int:
    """Output positions of a bucket: the ratio/offset rule or the absolute cap, <= max_len."""
    max_len = self._max_len
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
      per_device = functools.partial(_decode_batch, models=self._models, search=search,
                                     max_decode_len=max_decode_len)
      # Decoding has no collectives; check_vma=False lets the search's while_loop start
      # from unvarying zeros and carry per-device values without pcasts in search.py.
      self._compiled[key] = jax.jit(jax.shard_map(
          per_device, mesh=self._mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P(AXIS),
          check_vma=False))
    return self._compiled[key]

  def _score_fn(self):
    if 'score' not in self._compiled:
      per_device = functools.partial(_score_batch, models=self._models)
      self._compiled['score'] = jax.jit(jax.shard_map(
          per_device, mesh=self._mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P(AXIS)))
    return self._compiled['score']

  def encode_sources(self, sentences: Sequence[str],
                     line_numbers: Optional[Sequence[int]] = None) -> list[list[int]]:
    """Source token ids (with eos); too long a sentence is cut with a warning.

    `line_numbers` (1-based, default 1, 2, ...) name the input lines in that warning.
    """
    return self._encode(sentences, line_numbers, 'Input')

  def encode_targets(self, sentences: Sequence[str],
                     line_numbers: Optional[Sequence[int]] = None) -> list[list[int]]:
    """Target token ids (with eos) to score; too long a sentence is cut with a warning."""
    return self._encode(sentences, line_numbers, 'Reference')

  def _encode(self, sentences, line_numbers, what: str) -> list[list[int]]:
    max_len = self._max_len
    if line_numbers is None:
      line_numbers = range(1, len(sentences) + 1)
    encoded = []
    for line, sentence in zip(line_numbers, sentences):
      ids = self._tokenizer.encode(sentence) + [self._tokenizer.eos_id]
      if len(ids) > max_len:
        logging.warning('%s line %d has %d tokens; the model reads at most %d: truncated.',
                        what, line, len(ids), max_len)
        self.num_truncated += 1
        ids = ids[:max_len - 1] + [self._tokenizer.eos_id]
      encoded.append(ids)
    return encoded

  def translate_ids(self, variables, sources: Sequence[Sequence[int]],
                    search: SearchConfig) -> list[list[int]]:
    """Output token ids (without eos) for each source, in input order."""
    return [hypotheses[0][0] for hypotheses in self.search_ids(variables, sources, search)]

  def search_ids(self, variables, sources: Sequence[Sequence[int]], search: SearchConfig,
                 sentence_ids: Optional[Sequence[int]] = None
                 ) -> list[list[tuple[list[int], float]]]:
    """max(nbest, 1) (ids without eos, score) per source, best first, in input order.

    The score is beam search's: sum of log-probabilities / GNMT length penalty (0.0 for
    greedy search and sampling, which return no score). `sentence_ids` (default 0, 1, ...)
    pick each sentence's random stream when sampling, so that its sample does not depend on
    the batch it lands in.
    """
    if sentence_ids is None:
      sentence_ids = range(len(sources))
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs: list[Optional[list[tuple[list[int], float]]]] = [None] * len(sources)
    start = 0
    while start < len(order):
      bucket = bucket_length(len(sources[order[start]]), self._max_len)
      batch = self.batch_rows(bucket)
      chunk = [i for i in order[start:start + batch] if len(sources[i]) <= bucket]
      rows = np.zeros((batch, bucket), np.int32)
      ids = np.zeros((batch,), np.int32)
      for row, i in enumerate(chunk):
        rows[row, :len(sources[i])] = sources[i]
        ids[row] = sentence_ids[i]
      tokens, scores = self._run(self._decode_fn(search, bucket), variables, rows, ids)
      for row, i in enumerate(chunk):
        outputs[i] = [(_strip(t, self._tokenizer.eos_id), float(s))
                      for t, s in zip(tokens[row], scores[row]) if s > -np.inf]
        if not outputs[i]:  # Every hypothesis scored NaN or -inf: the model's, not the input's.
          raise NonFiniteScores(
              f'Every hypothesis for source {i + 1} of {len(sources)} scores NaN or -inf: these '
              'parameters do not translate (a run that diverged?). Decode another --checkpoint.')
      start += len(chunk)
    return outputs

  def score_ids(self, variables, sources: Sequence[Sequence[int]],
                targets: Sequence[Sequence[int]]) -> list[list[float]]:
    """Teacher-forced log-probability of each target token (eos included), in input order.

    The distribution is the search's: the pad id excluded, an ensemble's mean of
    log-probabilities renormalized, so sum(scores) / lp(len) is the beam search score of the
    same hypothesis.
    """
    if len(sources) != len(targets):
      raise ValueError(f'{len(sources)} sources but {len(targets)} targets.')
    order = sorted(range(len(sources)), key=lambda i: (len(sources[i]), len(targets[i])))
    outputs: list[Optional[list[float]]] = [None] * len(sources)
    start = 0
    while start < len(order):
      source_len = bucket_length(len(sources[order[start]]), self._max_len)
      batch = self.batch_rows(source_len)
      chunk = [i for i in order[start:start + batch] if len(sources[i]) <= source_len]
      target_len = bucket_length(max(len(targets[i]) for i in chunk), self._max_len)
      inputs = np.zeros((batch, source_len), np.int32)
      outputs_in = np.zeros((batch, target_len), np.int32)
      for row, i in enumerate(chunk):
        inputs[row, :len(sources[i])] = sources[i]
        outputs_in[row, :len(targets[i])] = targets[i]
      token_scores = self._run(self._score_fn(), variables, inputs, outputs_in)
      for row, i in enumerate(chunk):
        outputs[i] = token_scores[row, :len(targets[i])].tolist()
      start += len(chunk)
    return outputs

  def _run(self, fn, variables, *arrays: np.ndarray):
    """Runs fn on this process's share of each batch array; every process gets all outputs."""
    sharded = []
    for array in arrays:
      per_process = array.shape[0] // jax.process_count()
      local = array[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
      sharded.append(jax.make_array_from_process_local_data(
          sharding.batch_sharded(self._mesh), local))
    outputs = fn(members(variables), *sharded)
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
    lines = [first_line + i for i in nonempty]
    sources = self.encode_sources([sentences[i] for i in nonempty], lines)
    found = self.search_ids(variables, sources, search, lines)
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


def _decode_batch(variables, inputs, sentence_ids, *, models, search: SearchConfig,
                  max_decode_len: int):
  """One device's batch: encode once per model, then search over the KV caches.

  Returns (tokens [batch, n, max_decode_len], scores [batch, n]) of the n = max(nbest, 1)
  best hypotheses of each sentence.
  """
  batch_size = inputs.shape[0]
  fixed, caches = [], []
  for model, model_variables in zip(models, variables):
    model_fixed, cache = models_lib.split_fixed_cache(
        model.apply(model_variables, inputs, max_decode_len, method=model.init_cache))
    if not search.greedy:  # Beam search's rows: each sentence beam_size times.
      model_fixed = jax.tree.map(lambda x: search_lib.flatten_beam_dim(
          search_lib.add_beam_dim(x, search.beam_size)), model_fixed)
    fixed.append(model_fixed)
    caches.append(cache)
  source_lengths = jnp.sum(inputs > 0, axis=1)
  if search.max_decode_len is None:
    max_lengths = jnp.minimum(
        jnp.ceil(search.length_ratio * source_lengths + search.length_offset).astype(jnp.int32),
        max_decode_len)
  else:  # The cap replaces the per-sentence rule: every sentence gets max_decode_len.
    max_lengths = None
  min_lengths = None
  if search.min_length_ratio:
    min_lengths = jnp.ceil(search.min_length_ratio * source_lengths).astype(jnp.int32)

  def step_fn(tokens, caches):
    outputs = []
    for model, model_variables, model_fixed, cache in zip(models, variables, fixed, caches):
      logits, cache = model.apply(model_variables,
                                  models_lib.merge_fixed_cache(model_fixed, cache), tokens,
                                  method=model.decode_step)
      # Id 0 is padding (and the decoder's BOS), never an output: a 0 fed back mid-sentence
      # would be a token the model never saw in training, and is stripped from the text.
      outputs.append((logits.at[:, 0].set(-jnp.inf), models_lib.split_fixed_cache(cache)[1]))
    # The renormalized mean of the members' log-probabilities is the softmax of their mean
    # logits (each member's log-normalizer is a constant per row), and the searches are blind
    # to a constant per row: so an ensemble costs no softmax per member.
    return (sum(logits for logits, _ in outputs) / len(outputs),
            [cache for _, cache in outputs])

  common = dict(batch_size=batch_size, max_decode_len=max_decode_len, max_lengths=max_lengths,
                min_lengths=min_lengths, no_repeat_ngram_size=search.no_repeat_ngram_size)
  if search.greedy:
    tokens = search_lib.greedy_search(step_fn, caches, sampling=search.sampling,
                                      row_ids=sentence_ids, **common)
    return tokens[:, None], jnp.zeros((batch_size, 1), jnp.float32)
  sequences, scores = search_lib.beam_search(
      step_fn, caches, beam_size=search.beam_size, length_penalty=search.length_penalty,
      **common)
  keep = max(search.nbest, 1)  # [batch, keep, max_decode_len], [batch, keep]
  return sequences[:, :keep], scores[:, :keep]


def _score_batch(variables, inputs, targets, *, models):
  """Teacher-forced log-probabilities of `targets` [batch, target_len]; 0 at padding."""
  log_probs = []
  for model, model_variables in zip(models, variables):
    logits = model.apply(model_variables, inputs, targets, train=False)
    log_probs.append(jax.nn.log_softmax(logits.at[..., 0].set(-jnp.inf)))
  if len(log_probs) > 1:  # The ensemble's distribution, as the search sees it.
    log_probs = [jax.nn.log_softmax(sum(log_probs) / len(log_probs))]
  picked = jnp.take_along_axis(log_probs[0], targets[..., None], axis=-1)[..., 0]
  return jnp.where(targets > 0, picked, 0.0)
