"""The questions a learner asks of this model, answered with the study's own trained runs.

study.write_learner calls `measure` after training; it writes LEARNER_FILE (JSON) and PNGs
under the experiment's LEARNER_DIR, and the report only reads them. One function a question:
  - attention_reading: what the heads of a model that translates look at, on a sentence
    whose verb governs its object: the cross-attention row of the object's translation,
    the decoder's self-attention toward the verb's translation, how far rows are from uniform;
  - word_order: two sentences with the same words in another order, translated with and
    without positional encodings (without them the encoder cannot tell the two apart);
  - batch_statistics: why LayerNorm and not BatchNorm: how much BatchNorm's output for one
    sentence moves with its batch-mates, and with padding left in its statistics;
  - memory_by_length: the KV cache and the attention weights against the text's length,
    the sizes of the arrays this model builds (jax.eval_shape), plotted.
"""

import functools
import json
import math
import os
import re
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from transformer import attention_maps
from transformer import checkpoints
from transformer import inference
from transformer import input_pipeline
from transformer import models
from transformer import norms
from transformer import plots
from transformer import translator as translator_lib

LEARNER_DIR = 'learner'
LEARNER_FILE = 'measurements.json'
ATTENTION_SUBDIR = 'attention'
MEMORY_PLOT = 'memory_by_length.png'
# The verb governs its object: does the object's translation look back at the verb's? Maps
# mean little from a model that does not translate the sentence, so the reading takes the first
# of these whose translation has the object's English word, in words the Bible corpus (World
# English Bible) has often; the last was added when the small study's best model (BLEU 7.4)
# translated none of the others' objects.
class VerbSentence(NamedTuple):
  sentence: str
  verb: str
  object: str
  english_verb: str
  english_object: str


VERB_SENTENCES = (
    VerbSentence('Il mange du pain.', 'mange', 'pain', 'eats', 'bread'),
    VerbSentence('Il prit le pain.', 'prit', 'pain', 'took', 'bread'),
    VerbSentence('Il bâtit une maison.', 'bâtit', 'maison', 'built', 'house'),
    VerbSentence('Dieu créa le ciel et la terre.', 'créa', 'ciel', 'created', 'heaven'),
    VerbSentence('Il prit sa femme.', 'prit', 'femme', 'took', 'wife'),
)
# The same words in two orders: only positions tell who struck whom.
ORDER_SENTENCES = ('Pierre frappa Jean.', 'Jean frappa Pierre.')
BATCH_SIZES = (1, 2, 4, 16, 64)  # Sentences per batch whose statistics BatchNorm uses.
DRAWS = 20  # Random batches per size.
PADDED_BATCH = 16
MEMORY_LENGTHS = (16, 32, 64, 128, 256)


def word_positions(pieces: Sequence[str], word: str) -> list[int]:
  """Positions of the sentencepiece pieces that spell `word` ('▁' starts a word)."""
  words, index = [], -1
  for piece in pieces:
    index += piece.startswith('▁') or index < 0
    words.append(index)
  spelled = {}
  for position, (piece, w) in enumerate(zip(pieces, words)):
    if re.fullmatch(r'▁?\w+', piece):
      spelled.setdefault(w, []).append(position)
  for positions in spelled.values():
    if ''.join(pieces[p] for p in positions).lstrip('▁').lower() == word.lower():
      return positions
  return []


def normalized_entropy(rows: np.ndarray) -> float:
  """Mean entropy of attention rows over log(keys): 1 is uniform, 0 is one key each."""
  rows = np.clip(rows, 1e-12, 1.0)
  return float(np.mean(-(rows * np.log(rows)).sum(-1)) / math.log(rows.shape[-1]))


def translates_object(translation: str, english_object: str) -> bool:
  """Whether the object's English word is one of the translation's words (any case)."""
  return english_object.lower() in re.findall(r'\w+', translation.lower())


def attention_reading(workdir: str, out_dir: str) -> dict:
  """Maps of a sentence of VERB_SENTENCES (every layer and head); what its object's output reads.

  The sentence is the first whose greedy translation has its object's English word, or the
  first if none has ('translated_object' says which case). Figures are the heads' mean in
  the last layer; `object_and_verb_outputs` says which outputs are read. Decoder query t
  reads inputs 0..t, input j being output j - 1 (BOS first), so the verb's translation is
  decoder key t_verb + 1.
  """
  config, tokenizer, model, variables, step = inference.load_trained(workdir, 'best')
  search = inference.search_config(config, beam_size=1)
  readings = []  # (candidate, translation, (source, target, weights)), in the order tried.
  for candidate in VERB_SENTENCES:
    source, target, weights = attention_maps.read_sentence(model, variables, tokenizer,
                                                            candidate.sentence, search)
    translation = tokenizer.decode(target[:-1])
    readings.append((candidate, translation, (source, target, weights)))
    if translated_object := translates_object(translation, candidate.english_object):
      break
  chosen = readings[-1] if translated_object else readings[0]  # None did: read the first.
  candidate, translation, (source, target, weights) = chosen
  paths = attention_maps.draw_maps(tokenizer, source, target, weights, out_dir)
  piece = lambda i: tokenizer.processor.id_to_piece(int(i))
  source_pieces, target_pieces = [piece(i) for i in source], [piece(i) for i in target]
  out = {
      'workdir': workdir, 'step': step, **candidate._asdict(),
      'tried': [{'sentence': c.sentence, 'translation': t} for c, t, _ in readings],
      'translated_object': translated_object,
      'translation': translation, 'source_pieces': source_pieces,
      'target_pieces': target_pieces, 'maps': len(paths),
      'entropy_by_layer': {kind: [normalized_entropy(w) for w in weights[kind]]
                           for kind in attention_maps.KINDS},
  }
  cross = weights['cross'][-1].mean(0)  # [target positions, source positions]
  decoder_self = weights['decoder_self'][-1].mean(0)
  verb = word_positions(source_pieces, candidate.verb)
  obj = word_positions(source_pieces, candidate.object)
  if not (verb and obj):
    return out
  outputs = object_and_verb_outputs(cross, verb, obj, target_pieces, candidate)
  t_object, t_verb = outputs['object'], outputs['verb']
  out.update({
      'object_output': target_pieces[t_object], 'object_output_by': outputs['object_by'],
      # The maps label a decoder row by its input, the output before: this row's label.
      'object_row_label': ([attention_maps.BOS_PIECE] + target_pieces)[t_object],
      'object_cross_on_object': float(cross[t_object, obj].sum()),
      'object_cross_on_verb': float(cross[t_object, verb].sum()),
      'uniform_cross_on_object': len(obj) / len(source_pieces),
      'uniform_cross_on_verb': len(verb) / len(source_pieces),
  })
  if t_verb is not None:
    out.update({
        'verb_output': target_pieces[t_verb], 'verb_output_by': outputs['verb_by'],
        'object_self_on_verb_output': float(decoder_self[t_object, t_verb + 1]),
        'uniform_self': 1 / (t_object + 1)})
  return out


def object_and_verb_outputs(cross: np.ndarray, verb: Sequence[int], obj: Sequence[int],
                            target_pieces: Sequence[str], candidate: VerbSentence) -> dict:
  """Output positions of the object's and the verb's translations, and how each was found.

  Each is the first piece of its English word where the output has it ('word'; the verb's
  before the object's), else the output whose cross-attention (`cross`: [outputs, sources])
  puts most weight on its French word's pieces ('attention'; the verb's among the outputs
  before the object's). In English the verb comes before its object, so the object's output
  can look back at it; 'verb' is None when no output comes before the object's.
  """
  t_object, object_by = _output_of(candidate.english_object, target_pieces, cross, obj)
  found = {'object': t_object, 'object_by': object_by, 'verb': None, 'verb_by': None}
  if t_object == 0:
    return found
  t_verb, verb_by = _output_of(candidate.english_verb, target_pieces[:t_object],
                               cross[:t_object], verb)
  return {**found, 'verb': t_verb, 'verb_by': verb_by}


def _output_of(english: str, target_pieces: Sequence[str], cross: np.ndarray,
               french: Sequence[int]) -> tuple[int, str]:
  """The first output spelling `english` ('word'), else the one most on `french` ('attention')."""
  spelled = word_positions(target_pieces, english)
  if spelled:
    return spelled[0], 'word'
  return int(cross[:, french].sum(1).argmax()), 'attention'


def word_order(workdirs: dict[str, str]) -> dict:
  """{name: {'translations': [...], 'same': bool}} of ORDER_SENTENCES by each run's model.

  Without positions self-attention is permutation-equivariant and cross-attention sums over
  keys, so two orders of the same pieces give one translation: 'same' is then True by
  construction, a check on the model as much as a lesson.
  """
  out = {}
  for name, workdir in workdirs.items():
    config, tokenizer, model, variables, step = inference.load_trained(workdir, 'best')
    translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=len(ORDER_SENTENCES))
    translations = translator.translate(variables, list(ORDER_SENTENCES),
                                        inference.search_config(config, beam_size=1))
    out[name] = {'workdir': workdir, 'step': step, 'positions': config.model.positions,
                 'translations': translations, 'same': len(set(translations)) == 1}
  return out


def relative_change(y: np.ndarray, reference: np.ndarray) -> float:
  """||y - reference|| / ||reference||."""
  return float(np.linalg.norm(y - reference) / np.linalg.norm(reference))


@functools.partial(jax.jit, static_argnums=0)
def _normalize(norm: type, x: jax.Array, mask: jax.Array) -> jax.Array:
  """`norm` as initialized (scale 1, bias 0), training mode: statistics from this batch."""
  module = norm()
  params = module.init(jax.random.key(0), x, mask)
  return module.apply(params, x, mask, train=True, mutable=['batch_stats'])[0]


def first_row_normalized(norm: type, rows: Sequence[np.ndarray],
                         pad_vectors: Optional[np.ndarray] = None, *,
                         length: Optional[int] = None) -> np.ndarray:
  """A freshly initialized `norm`'s output (training mode) for rows[0] in a batch of `rows`.

  Rows are [tokens, features], padded to the longest: with padding masked (as this
  project's BatchNorm does) unless `pad_vectors` [longest, features] is given, in which
  case the pads are those vectors and count in the statistics (an unmasked BatchNorm).
  `length` (>= the longest) pads further, masked either way: one compiled shape for many
  batches, the same statistics.
  """
  longest = max(len(r) for r in rows)
  length = length or longest
  fill = ((lambda r: np.zeros((longest - len(r), r.shape[1]), r.dtype)) if pad_vectors is None
          else (lambda r: pad_vectors[len(r):longest]))
  x = np.stack([np.pad(np.concatenate([r, fill(r)]), ((0, length - longest), (0, 0)))
                for r in rows])
  counted = [len(r) if pad_vectors is None else longest for r in rows]
  mask = np.stack([np.arange(length) < n for n in counted])
  return np.asarray(_normalize(norm, jnp.asarray(x), jnp.asarray(mask)))[0, :len(rows[0])]


def batch_statistics(workdir: str, sentences: Sequence[str], *, seed: int = 0) -> dict:
  """How much a norm's output for one sentence moves with the batch it is normalized in.

  Features: the model's own input vectors (token embedding * sqrt(d) + position) of
  `sentences`; the first is the one followed. BatchNorm (norms.BatchNorm as initialized:
  scale 1, bias 0) against its output with every sentence's statistics (what its running
  averages estimate); LayerNorm (norms.LayerNorm) against its output alone, which it never
  leaves: it normalizes each token by itself. For each batch size, the mean over DRAWS
  random batches of relative_change. Padding: one batch of PADDED_BATCH padded to its
  longest sentence, the change from counting the pad tokens' vectors in the statistics.
  """
  _, tokenizer, model, variables, _ = inference.load_trained(workdir, 'best')
  variables = jax.device_get(variables)  # On one device: the jit below places them.
  max_len = model.config.max_len

  @jax.jit
  def embed_row(tokens):  # [max_len] -> [max_len, features]
    return model.apply(variables, tokens[None], None, train=False,
                       method=lambda m, t, p, train: m._embed(t, p, train=train))[0]  # pylint: disable=protected-access

  def embed(ids: Sequence[int]) -> np.ndarray:
    """One compiled shape: positions are absolute, so the padding after a text changes
    nothing before it. A text longer than max_len is cut, as the translator cuts it."""
    ids = list(ids)[:max_len]
    padded = jnp.asarray(ids + [0] * (max_len - len(ids)), jnp.int32)
    return np.asarray(embed_row(padded))[:len(ids)]

  vectors = [embed(tokenizer.encode(s) + [tokenizer.eos_id]) for s in sentences]
  every = np.concatenate(vectors)
  longest = max(len(v) for v in vectors)
  rng = np.random.default_rng(seed)
  others = np.arange(1, len(vectors))
  batch = lambda size: [vectors[0]] + [vectors[i] for i in rng.choice(others, size - 1,
                                                                      replace=False)]
  kinds = {'batch_norm': norms.BatchNorm, 'layer_norm': norms.LayerNorm}
  references = {'batch_norm': (vectors[0] - every.mean(0)) / np.sqrt(every.var(0) + 1e-5),
                'layer_norm': first_row_normalized(norms.LayerNorm, [vectors[0]])}
  out = {'workdir': workdir, 'features': int(every.shape[-1]), 'sentences': len(vectors),
         'followed': sentences[0], 'batch_sizes': list(BATCH_SIZES), 'draws': DRAWS}
  for name, norm in kinds.items():
    out[name] = [float(np.mean([
        relative_change(first_row_normalized(norm, batch(size), length=longest),
                        references[name])
        for _ in range(DRAWS)])) for size in BATCH_SIZES]
  padded = batch(PADDED_BATCH)
  pad_vectors = embed([0] * max(len(r) for r in padded))
  out['padding'] = {
      'batch': PADDED_BATCH,
      'pad_fraction': float(1 - sum(len(r) for r in padded) /
                            (PADDED_BATCH * max(len(r) for r in padded))),
      'unmasked_vs_masked': relative_change(
          first_row_normalized(norms.BatchNorm, padded, pad_vectors),
          first_row_normalized(norms.BatchNorm, padded))}
  return out


def memory_by_length(workdir: str, path: str,
                     lengths: Sequence[int] = MEMORY_LENGTHS) -> dict:
  """Bytes of the decoding cache and of the attention weights at each length, plotted.

  One sentence, source and output both `length` tokens. The cache (model.init_cache) holds
  K and V of every source token and of every output position, each decoder layer: it grows
  linearly. The attention weights of one full pass (the 'attention_weights' the model sows:
  encoder self, decoder self and cross, every layer and head) grow with length squared.
  Both are the sizes of the arrays the model builds (jax.eval_shape, nothing computed);
  the cache's is checked against models.cache_bytes's formula in the tests.
  """
  config, _, model, variables, _ = inference.load_trained(workdir, 'best')
  lengths = [n for n in lengths if n <= model.config.max_len]
  nbytes = lambda tree: int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
  cache, attention = [], []
  for n in lengths:
    tokens = jax.ShapeDtypeStruct((1, n), jnp.int32)
    cache.append(nbytes(jax.eval_shape(
        lambda v, x, n=n: model.apply(v, x, n, method=models.Transformer.init_cache),
        variables, tokens)))
    attention.append(nbytes(jax.eval_shape(
        lambda v, x: model.apply(v, x, x, train=False, mutable=['attention_weights'])[1],
        variables, tokens)))
  plots.plot_memory_by_length(
      lengths, {'KV cache (decoding)': cache,
                'attention weights of one full pass (all layers and heads)': attention}, path,
      title=f'Memory of one sentence against its length (d_model {config.model.emb_dim}, '
            f'{config.model.num_layers}+{config.model.num_layers} layers, '
            f'{config.model.num_heads} heads)')
  return {'workdir': workdir, 'lengths': list(lengths), 'cache_bytes': cache,
          'attention_bytes': attention, 'plot': os.path.basename(path)}


def measure(experiment_dir: str, *, translating: str, baseline: str,
            no_positions: Optional[str] = None, sentences: int = 200) -> str:
  """Every measurement above into `experiment_dir/LEARNER_DIR`; returns LEARNER_FILE's path.

  `translating` is the run whose attention is read (the study passes its best seed-0 run),
  `baseline` the run whose embeddings and shapes the other measurements use, `no_positions`
  the run without positional encodings (skipped if None).
  """
  out_dir = os.path.join(experiment_dir, LEARNER_DIR)
  os.makedirs(out_dir, exist_ok=True)
  config = checkpoints.load_config(baseline)
  validation = [fr for fr, _ in input_pipeline.load_pairs(config, 'validation')[:sentences]]
  runs = {'baseline': baseline, **({'no_positions': no_positions} if no_positions else {})}
  measurements = {
      'attention': attention_reading(translating, os.path.join(out_dir, ATTENTION_SUBDIR)),
      'word_order': word_order(runs),
      'batch_statistics': batch_statistics(baseline, validation),
      'memory': memory_by_length(baseline, os.path.join(out_dir, MEMORY_PLOT)),
  }
  path = os.path.join(out_dir, LEARNER_FILE)
  with open(path, 'w') as f:
    json.dump(measurements, f, indent=1, ensure_ascii=False)
  return path
