"""The questions a learner asks of this model, answered with the study's own trained runs.

study.write_learner calls `measure` after training; it writes a JSON file and PNGs under the
experiment's learner/ folder (workdir.ExperimentDir), and learner_report.py only reads them.
One function a question:
  - attention_reading: on every test sentence whose verb and object the model translates
    (verb_object.py's rule), where the object's translation looks, against position-only
    controls;
  - word_order: pairs of sentences with the same words in two orders, translated with and
    without positional encodings (without them the encoder cannot tell the two apart);
  - batch_dependence: the trained batch_norm model in training mode (statistics of the
    batch) against its running statistics: how one sentence's output moves with its
    batch-mates, and the validation loss under each;
  - decode_cost: greedy decoding with the KV cache against recomputing the prefix at every
    step, by output length: seconds, and the memory XLA assigns each compiled program.
"""

import dataclasses
import json
import math
import os
import statistics
import time
from typing import Optional, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from transformer import attention_maps
from transformer import datasets
from transformer import inference
from transformer import losses
from transformer import models
from transformer import plots
from transformer import translator as translator_lib
from transformer import verb_object
from transformer import workdir as workdir_lib

# The same words in two orders: only positions tell who struck whom.
# Two orders of the same words: who does what to whom. A fixed list of Bible names and
# verbs, written before any model translated it; the report shows every pair.
ORDER_PAIRS = (
    ('Caïn tua Abel.', 'Abel tua Caïn.'),
    ('Jacob aima Rachel.', 'Rachel aima Jacob.'),
    ('Joseph vit son père.', 'Son père vit Joseph.'),
    ('Pierre frappa Jean.', 'Jean frappa Pierre.'),
    ('Dieu bénit Abraham.', 'Abraham bénit Dieu.'),
    ('Isaac appela Jacob.', 'Jacob appela Isaac.'),
    ('Le roi tua le prophète.', 'Le prophète tua le roi.'),
    ('Moïse parla à Aaron.', 'Aaron parla à Moïse.'),
)
BATCH_SIZES = (1, 2, 4, 16, 64)  # Sentences per batch whose statistics BatchNorm uses.
DRAWS = 20  # Random batch-mates per size.
BATCH_NORM_SENTENCES = 256  # Validation sentences: the followed one, its mates, the loss.
DECODE_LENGTHS = (16, 32, 64, 128, 256)
REPEATS = 5  # Timed runs of each decode after its compilation; the median is kept.


def normalized_entropy(rows: np.ndarray) -> float:
  """Mean entropy of attention rows over log(keys): 1 is uniform, 0 is one key each."""
  rows = np.clip(rows, 1e-12, 1.0)
  return float(np.mean(-(rows * np.log(rows)).sum(-1)) / math.log(rows.shape[-1]))


def _pieces(tokenizer, ids: Sequence[int]) -> list[str]:
  return [tokenizer.processor.id_to_piece(int(i)) for i in ids]


def select(tokenizer, lines: Sequence[int], texts: Sequence[str],
           sources: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]
           ) -> tuple[list[dict], list[dict], int]:
  """(qualifying, looping, untranslated) among candidate sources and their outputs.

  Each candidate is its line, text, and source and output ids (each ending with eos); its
  source has a verb and object of verb_object's lists. A looping output is set aside
  whatever it contains; a source qualifies when its output has the English words of one of
  its verb-object pairs, verb then object (the first such pair is read).
  """
  qualifying, looping, untranslated = [], [], 0
  for line, text, source, output in zip(lines, texts, sources, outputs):
    translation = tokenizer.decode(output[:-1])
    if verb_object.loops(translation):
      looping.append({'line': line, 'source': text, 'translation': translation})
      continue
    source_words = verb_object.words_of(_pieces(tokenizer, source[:-1]))
    output_words = verb_object.words_of(_pieces(tokenizer, output[:-1]))
    found = ((source_words[v], source_words[o], english)
             for v, o in verb_object.find_french_pairs(source_words)
             if (english := verb_object.find_english_pair(
                 output_words, source_words[v].text, source_words[o].text)) is not None)
    verb, obj, english = next(found, (None, None, None))
    if english is None:
      untranslated += 1
      continue
    english_verb, english_object = (output_words[i] for i in english)
    qualifying.append({
        'line': line, 'source': text, 'translation': translation,
        'verb': verb.text, 'object': obj.text, 'english_verb': english_verb.text,
        'english_object': english_object.text, 'source_ids': list(source),
        'output_ids': list(output), 'source_object': obj.pieces,
        'target_verb': english_verb.pieces, 't_object': english_object.pieces[0]})
  return qualifying, looping, untranslated


def read(model, variables, sentence: dict) -> tuple[list[dict], dict[str, list[float]]]:
  """verb_object.reading of every layer (heads' mean), and the entropy of every map kind."""
  weights = attention_maps.attention_weights(model, variables, sentence['source_ids'],
                                             sentence['output_ids'])
  layers = [verb_object.reading(cross.mean(0), self_.mean(0), sentence['source_object'],
                                sentence['t_object'], sentence['target_verb'])
            for cross, self_ in zip(weights['cross'], weights['decoder_self'])]
  entropy = {kind: [normalized_entropy(w) for w in weights[kind]]
             for kind in attention_maps.KINDS}
  return layers, entropy


def summarize(readings: Sequence[Sequence[dict]]) -> list[dict]:
  """Per layer: mean and sample sd over sentences of each ratio, and counts of the cases."""
  out = []
  for layer in zip(*readings):
    row = {'sentences': len(layer)}
    for key in ('cross_object_ratio', 'cross_diagonal_ratio', 'self_verb_ratio',
                'self_same_distance_ratio', 'self_previous_token_ratio'):
      values = [r[key] for r in layer]
      row[key] = float(np.mean(values))
      row[key + '_sd'] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    row['object_above_diagonal'] = sum(r['cross_object_ratio'] > r['cross_diagonal_ratio']
                                       for r in layer)
    row['diagonal_overlaps_object'] = sum(r['diagonal_overlaps_object'] for r in layer)
    row['verb_above_same_distance'] = sum(r['self_verb_ratio'] > r['self_same_distance_ratio']
                                          for r in layer)
    row['verb_is_previous_token'] = sum(r['distance'] == 0 for r in layer)
    out.append(row)
  return out


def attention_reading(workdir: str, pairs: Sequence[tuple[str, str]], out_dir: str) -> dict:
  """Where the object's translation looks, over every sentence of `pairs` that qualifies.

  Candidates are the sources with a verb and its object (verb_object.find_french_pairs);
  each is translated greedily, and qualifies when its translation is no loop and has both
  English words. The maps of the first qualifying sentence are drawn into `out_dir`.
  """
  config, tokenizer, model, variables, step, _ = inference.load_trained(workdir, 'best')
  translator = translator_lib.BatchTranslator(model, tokenizer,
                                              batch_size=config.eval_batch_size)
  candidates = [(line, ids) for line, ids in enumerate(
      translator.encode_sources([fr for fr, _ in pairs]), 1)
      if verb_object.find_french_pair(verb_object.words_of(_pieces(tokenizer, ids[:-1])))]
  lines, sources = [c[0] for c in candidates], [c[1] for c in candidates]
  outputs = [ids + [tokenizer.eos_id] for ids in translator.translate_ids(
      variables, sources, inference.search_config(config, beam_size=1))]
  qualifying, looping, untranslated = select(
      tokenizer, lines, [pairs[line - 1][0] for line in lines], sources, outputs)
  readings, entropies = [], []
  for sentence in qualifying:
    layers, entropy = read(model, variables, sentence)
    readings.append(layers)
    entropies.append(entropy)
    sentence['layers'] = layers
  maps = 0
  if qualifying:
    first = qualifying[0]
    weights = attention_maps.attention_weights(model, variables, first['source_ids'],
                                               first['output_ids'])
    maps = len(attention_maps.draw_maps(tokenizer, first['source_ids'], first['output_ids'],
                                        weights, out_dir))
  for sentence in qualifying:
    for key in ('source_ids', 'output_ids', 'source_object', 'target_verb', 't_object'):
      del sentence[key]
  return {
      'workdir': workdir, 'step': step, 'split_sentences': len(pairs),
      'candidates': len(candidates), 'looping': looping, 'untranslated': untranslated,
      'sentences': qualifying, 'by_layer': summarize(readings), 'maps': maps,
      'entropy_by_layer': {kind: np.mean([e[kind] for e in entropies], 0).tolist()
                           for kind in attention_maps.KINDS} if entropies else {},
  }


def word_order(workdirs: dict[str, str]) -> dict:
  """{name: {'translations': [[a, b], ...], 'same': [bool, ...]}}: each ORDER_PAIRS pair's
  greedy translations by each run's model, and whether the two orders got one translation.

  Without positions self-attention is permutation-equivariant and cross-attention sums over
  keys, so two orders of the same pieces give one translation: 'same' is then True by
  construction, a check on the model as much as a lesson.
  """
  sentences = [sentence for pair in ORDER_PAIRS for sentence in pair]
  out = {}
  for name, workdir in workdirs.items():
    config, tokenizer, model, variables, step, _ = inference.load_trained(workdir, 'best')
    translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=len(sentences))
    flat = translator.translate(variables, sentences, inference.search_config(config,
                                                                              beam_size=1))
    pairs = [flat[i:i + 2] for i in range(0, len(flat), 2)]
    out[name] = {'workdir': workdir, 'step': step, 'positions': config.model.positions,
                 'translations': pairs, 'same': [a == b for a, b in pairs]}
  return out


def relative_change(y: np.ndarray, reference: np.ndarray) -> float:
  """||y - reference|| / ||reference||."""
  return float(np.linalg.norm(y - reference) / np.linalg.norm(reference))


def batch_statistics_model(model: models.Transformer) -> models.Transformer:
  """The same network without dropout: in training mode it differs from evaluation only by
  BatchNorm's statistics (the batch's instead of the running averages)."""
  return models.Transformer(dataclasses.replace(
      model.config, dropout_rate=0.0, attention_dropout_rate=0.0, activation_dropout_rate=0.0))


def logits_function(model: models.Transformer):
  """jit (variables, inputs, targets, batch_statistics) -> logits; one program per shape.

  Padding (id 0) never enters BatchNorm's statistics (norms.BatchNorm is masked), so rows
  padded to one length normalize as they would alone.
  """
  undropped = batch_statistics_model(model)

  @jax.jit
  def logits(variables, inputs, targets):
    return model.apply(variables, inputs, targets, train=False)

  @jax.jit
  def logits_batch_statistics(variables, inputs, targets):
    # Training mode writes new running averages; they are dropped.
    return undropped.apply(variables, inputs, targets, train=True, mutable=['batch_stats'])[0]

  return lambda variables, inputs, targets, batch_statistics: np.asarray(
      (logits_batch_statistics if batch_statistics else logits)(variables, inputs, targets))


def _padded(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def batch_dependence(workdir: str, pairs: Sequence[tuple[str, str]], *, seed: int = 0,
                     batch_sizes: Sequence[int] = BATCH_SIZES, draws: int = DRAWS) -> dict:
  """The trained BatchNorm model (best checkpoint) with batch statistics vs running ones.

  Follows pairs[0] (teacher-forced on its reference) in batches of `size` with random
  batch-mates from pairs[1:], `draws` times a size (once for size 1). For its logits:
  'moves': mean relative_change from their mean over the draws (how far batch-mates move
  it); 'from_running': mean relative_change from its logits under the running statistics;
  'top1_changed': the fraction of its tokens whose most likely next token differs from
  the running statistics' one; 'running_moves': the largest change of its logits under the
  running statistics across the same batches (0: evaluation never looks at batch-mates);
  'running_vs_alone': the same against the sentence alone, a program of another shape
  (float rounding only).
  Then the validation loss (mean token cross-entropy over every pair) in consecutive batches
  of each size, with batch statistics, against the running statistics' loss.
  """
  config, tokenizer, model, variables, step, _ = inference.load_trained(workdir, 'best')
  if config.model.norm != 'batch_norm':
    raise ValueError(f'{workdir} normalizes with {config.model.norm}, not batch_norm.')
  variables = jax.device_get(variables)  # On one device: the jit places them.
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=1)
  sources = translator.encode_sources([fr for fr, _ in pairs])
  targets = translator.encode_targets([en for _, en in pairs])
  source_len, target_len = max(map(len, sources)), max(map(len, targets))
  logits = logits_function(model)

  def run(rows: Sequence[int], batch_statistics: bool) -> np.ndarray:
    return logits(variables, _padded([sources[i] for i in rows], source_len),
                  _padded([targets[i] for i in rows], target_len), batch_statistics)

  followed = len(targets[0])
  running = run([0], False)[0, :followed]
  rng = np.random.default_rng(seed)
  by_size = []
  for size in batch_sizes:
    batches = [[0] + list(rng.choice(np.arange(1, len(pairs)), size - 1, replace=False))
               for _ in range(1 if size == 1 else draws)]
    trained = [run(b, True)[0, :followed] for b in batches]
    evaluated = [run(b, False)[0, :followed] for b in batches]
    mean = np.mean(trained, 0)
    by_size.append({
        'size': size, 'draws': len(batches),
        'moves': float(np.mean([relative_change(y, mean) for y in trained])),
        'from_running': float(np.mean([relative_change(y, running) for y in trained])),
        'top1_changed': float(np.mean([np.mean(y.argmax(-1) != running.argmax(-1))
                                       for y in trained])),
        'running_moves': float(max(np.abs(y - evaluated[0]).max() for y in evaluated)),
        'running_vs_alone': float(max(np.abs(y - running).max() for y in evaluated)),
    })
  losses_by_size = []
  for size in batch_sizes:
    total, tokens = 0.0, 0.0
    for start in range(0, len(pairs), size):
      rows = list(range(start, min(start + size, len(pairs))))
      out = run(rows, True)
      loss, weight = losses.cross_entropy(out, _padded([targets[i] for i in rows], target_len))
      total, tokens = total + float(loss), tokens + float(weight)
    losses_by_size.append(total / tokens)
  total, tokens = 0.0, 0.0
  for start in range(0, len(pairs), max(batch_sizes)):
    rows = list(range(start, min(start + max(batch_sizes), len(pairs))))
    loss, weight = losses.cross_entropy(
        run(rows, False), _padded([targets[i] for i in rows], target_len))
    total, tokens = total + float(loss), tokens + float(weight)
  return {'workdir': workdir, 'step': step, 'sentences': len(pairs),
          'followed': pairs[0][0], 'followed_tokens': followed, 'by_size': by_size,
          'loss_batch_statistics': losses_by_size, 'loss_running': total / tokens}


def greedy_cached(model: models.Transformer, variables, inputs: jax.Array,
                  length: int) -> jax.Array:
  """`length` greedy tokens [batch, length] through the KV cache, never stopping at eos
  (each length costs what it says); id 0 (padding, BOS) is never chosen, as in search."""
  cache = model.apply(variables, inputs, length, method=model.init_cache)

  def step(i, carry):
    tokens, cache = carry
    previous = jnp.where(i == 0, 0, lax.dynamic_index_in_dim(tokens, i - 1, 1, False))
    logits, cache = model.apply(variables, cache, previous, method=model.decode_step)
    chosen = jnp.argmax(logits.at[:, 0].set(-jnp.inf), -1).astype(jnp.int32)
    return tokens.at[:, i].set(chosen), cache

  tokens = jnp.zeros((inputs.shape[0], length), jnp.int32)
  return lax.fori_loop(0, length, step, (tokens, cache))[0]


def prefix_buckets(length: int) -> list[int]:
  """Prefix lengths a recomputing step pads to: powers of two from 8, then `length`."""
  buckets = [b for b in (2 ** k for k in range(3, 16)) if b < length]
  return buckets + [length]


def greedy_recomputed(model: models.Transformer, variables, inputs: jax.Array,
                      length: int) -> jax.Array:
  """The same tokens as greedy_cached, the decoder rerun over the whole prefix each step.

  The source is encoded once (as a decoder without a cache still does). Step i runs the
  full teacher-forced decoder on outputs 0..i-1, padded to the smallest prefix_buckets
  length above i (one compiled program holds a branch per bucket), and keeps row i.
  Target i itself is a placeholder (1): the decoder reads only targets before it, but
  marks a row real by its own target.
  """
  encoded = model.apply(variables, inputs, method=model.encode)
  buckets = prefix_buckets(length)

  def branch(bucket):
    def logits_at(tokens, i):
      positions = jnp.arange(bucket)
      targets = jnp.where(positions < i, tokens[:, :bucket], jnp.where(positions == i, 1, 0))
      logits = model.apply(variables, encoded, inputs, targets, method=model.decode)
      return lax.dynamic_index_in_dim(logits, i, 1, False)  # [batch, vocab]
    return logits_at

  def step(i, tokens):
    index = jnp.searchsorted(jnp.asarray(buckets), i, side='right')
    logits = lax.switch(index, [branch(b) for b in buckets], tokens, i)
    chosen = jnp.argmax(logits.at[:, 0].set(-jnp.inf), -1).astype(jnp.int32)
    return tokens.at[:, i].set(chosen)

  return lax.fori_loop(0, length, step, jnp.zeros((inputs.shape[0], length), jnp.int32))


def decode_cost(workdir: str, text: str, *,
                lengths: Sequence[int] = DECODE_LENGTHS, repeats: int = REPEATS) -> dict:
  """Greedy decoding of one sentence with the KV cache vs recomputing, by output length.

  At each length n (up to the model's max_len) the source is the first n - 1 pieces of
  `text` and eos, and n tokens are decoded. Seconds: the median of `repeats` runs of the
  compiled program (compilation excluded). Bytes: XLA's memory_analysis of each compiled
  program, measured by the compiler's buffer assignment rather than counted from array
  shapes: 'temp' (its working buffers: the cache, activations, attention weights), and the
  arguments (the parameters and the source) and outputs. 'same_tokens': the two decodes
  chose the same tokens.
  """
  config, tokenizer, model, variables, step, _ = inference.load_trained(workdir, 'best')
  variables = jax.device_get(variables)
  text_ids = tokenizer.encode(text)
  rows = []
  for n in [n for n in lengths if n <= model.config.max_len]:
    if len(text_ids) < n - 1:
      raise ValueError(f'The text has {len(text_ids)} pieces; length {n} needs {n - 1}.')
    inputs = jnp.asarray([text_ids[:n - 1] + [tokenizer.eos_id]], jnp.int32)
    row = {'length': n, 'cache_bytes_formula': models.cache_bytes(
        model.config, batch=1, beam=1, source_len=n, max_decode_len=n)}
    tokens = {}
    for name, decode in (('cached', greedy_cached), ('recomputed', greedy_recomputed)):
      compiled = jax.jit(lambda v, x, decode=decode, n=n: decode(model, v, x, n)).lower(
          variables, inputs).compile()
      memory = compiled.memory_analysis()
      seconds = []
      for _ in range(repeats):
        start = time.perf_counter()
        tokens[name] = np.asarray(jax.block_until_ready(compiled(variables, inputs)))
        seconds.append(time.perf_counter() - start)
      row.update({f'{name}_seconds': statistics.median(seconds),
                  f'{name}_temp_bytes': int(memory.temp_size_in_bytes),
                  f'{name}_argument_bytes': int(memory.argument_size_in_bytes),
                  f'{name}_output_bytes': int(memory.output_size_in_bytes)})
    row['same_tokens'] = bool(np.array_equal(tokens['cached'], tokens['recomputed']))
    rows.append(row)
  return {'workdir': workdir, 'step': step, 'repeats': repeats,
          'device': jax.devices()[0].device_kind, 'memory_measure': 'xla_memory_analysis',
          'model': {'emb_dim': config.model.emb_dim, 'num_layers': config.model.num_layers,
                    'num_heads': config.model.num_heads}, 'by_length': rows}


def plot_decode_cost(cost: dict, path: str) -> str:
  """Seconds and temp bytes of both decodes against the length, log-log."""
  rows = cost['by_length']
  lengths = [r['length'] for r in rows]
  return plots.plot_memory_by_length(
      lengths, {'KV cache: working memory (XLA temp)': [r['cached_temp_bytes'] for r in rows],
                'recompute: working memory (XLA temp)': [r['recomputed_temp_bytes']
                                                         for r in rows]},
      path, title='Working memory of one greedy decode against its length '
                  f"(d_model {cost['model']['emb_dim']}, {cost['model']['num_layers']} layers)")


def measure(experiment_dir: str, *, translating: str, baseline: str,
            batch_norm: Optional[str] = None, no_positions: Optional[str] = None,
            batch_norm_sentences: int = BATCH_NORM_SENTENCES,
            lengths: Sequence[int] = DECODE_LENGTHS, repeats: int = REPEATS) -> str:
  """Every measurement above into the experiment's learner folder; returns the JSON's path.

  `translating` is the run whose attention is read on the test split (the study passes its
  best seed-0 run), `baseline` the run whose decoding is timed and whose word order is
  compared with `no_positions` (the run without positional encodings), `batch_norm` the
  trained batch_norm run. Each of the last two is skipped if None.
  """
  experiment = workdir_lib.ExperimentDir(experiment_dir)
  os.makedirs(experiment.file(experiment.LEARNER), exist_ok=True)
  config = workdir_lib.Workdir(baseline).config()
  test = datasets.load_pairs(config, 'test')
  runs = {'baseline': baseline, **({'no_positions': no_positions} if no_positions else {})}
  measurements = {
      'order_pairs': [list(pair) for pair in ORDER_PAIRS],
      'attention': attention_reading(
          translating, test, experiment.file(experiment.LEARNER, experiment.LEARNER_ATTENTION)),
      'word_order': word_order(runs),
  }
  if batch_norm:
    validation = datasets.load_pairs(config, 'validation')[:batch_norm_sentences]
    measurements['batch_norm'] = batch_dependence(batch_norm, validation)
  # A source as long as the longest decode: test sentences end to end.
  cost = decode_cost(baseline, ' '.join(fr for fr, _ in test[:100]), lengths=lengths,
                     repeats=repeats)
  cost['plot'] = os.path.basename(plot_decode_cost(
      cost, experiment.file(experiment.LEARNER, experiment.LEARNER_MEMORY_PLOT)))
  measurements['decode_cost'] = cost
  path = experiment.file(experiment.LEARNER, experiment.LEARNER_RESULT)
  with open(path, 'w') as f:
    json.dump(measurements, f, indent=1, ensure_ascii=False)
  return path
