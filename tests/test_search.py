"""Tests for transformer/search.py against NumPy references.

The fake model is a table of logits indexed by (table, step, token before the
previous one, previous token). The token before the previous one lives only in
the cache, so a beam whose cache is not reordered with it scores wrongly.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import search as search_lib

EOS = 1
VOCAB = 5  # pad/bos 0, eos 1, words 2..4


def make_step_fn(tables):
  """Step function over logits tables[table, step, before_previous, previous].

  Args:
    tables: float[num_tables, steps, vocab, vocab, vocab].

  Returns:
    step_fn(tokens, cache) for a cache {'table', 'prev', 'step'} where 'table'
    picks each row's table.
  """
  tables = jnp.asarray(tables, jnp.float32)

  def step_fn(tokens, cache):
    logits = tables[cache['table'], cache['step'], cache['prev'], tokens]
    return logits, dict(cache, prev=tokens, step=cache['step'] + 1)

  return step_fn


def make_cache(table_ids, per_row_step=False):
  table_ids = jnp.asarray(table_ids, jnp.int32)
  step = jnp.zeros_like(table_ids) if per_row_step else jnp.array(0, jnp.int32)
  return {'table': table_ids, 'prev': jnp.zeros_like(table_ids), 'step': step}


def counting(step_fn):
  """Wraps step_fn so that each executed decoding step appends to a list."""
  calls = []

  def counted(tokens, cache):
    jax.debug.callback(lambda: calls.append(1))
    return step_fn(tokens, cache)

  return counted, calls


def log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def gnmt_penalty(length, alpha):
  return ((5.0 + length) / 6.0) ** alpha


def all_hypotheses(table, limit, alpha):
  """Every eos-terminated sequence of <= limit tokens, best GNMT score first.

  Args:
    table: logits [steps, vocab, vocab, vocab] of one sentence.
    limit: the most tokens a sequence may have, eos included.
    alpha: length penalty exponent.

  Returns:
    List of (tokens tuple, score), sorted by descending score.
  """
  log_probs = log_softmax(table)
  hypotheses = []
  for length in range(1, limit + 1):
    for words in itertools.product(
        [t for t in range(VOCAB) if t != EOS], repeat=length - 1):
      tokens = words + (EOS,)
      fed = (0, 0) + tokens  # bos is fed first; the cache starts at 0 too
      total = sum(log_probs[i, fed[i], fed[i + 1], tokens[i]]
                  for i in range(length))
      hypotheses.append((tokens, total / gnmt_penalty(length, alpha)))
  return sorted(hypotheses, key=lambda h: -h[1])


def numpy_greedy(table, limit):
  """Argmax decoding of one sentence, forced to eos at its limit."""
  fed, tokens = [0, 0], []
  while not tokens or tokens[-1] != EOS:
    token = int(np.argmax(table[len(tokens), fed[-2], fed[-1]]))
    tokens.append(EOS if len(tokens) == limit - 1 else token)
    fed.append(token)
  return tokens


def padded(tokens, length):
  return list(tokens) + [0] * (length - len(tokens))


def test_length_penalty_matches_gnmt_formula():
  lengths = np.array([1, 2, 7, 30])
  for alpha in (0.0, 0.6, 1.0):
    np.testing.assert_allclose(
        search_lib.length_penalty_fn(lengths, alpha),
        ((5.0 + lengths) / 6.0) ** alpha, rtol=1e-6)
  # Length counts eos: a hypothesis that is only eos is not penalised.
  assert search_lib.length_penalty_fn(1, 0.6) == pytest.approx(1.0)


def test_beam_helpers_tile_and_gather_rows_but_not_scalars():
  tree = {'rows': jnp.arange(6).reshape(2, 3), 'index': jnp.array(7)}
  tiled = jax.tree_util.tree_map(lambda x: search_lib.add_beam_dim(x, 4), tree)
  assert tiled['rows'].shape == (2, 4, 3) and tiled['index'] == 7
  flat = jax.tree_util.tree_map(search_lib.flatten_beam_dim, tiled)
  np.testing.assert_array_equal(flat['rows'][:4], np.tile([0, 1, 2], (4, 1)))
  back = jax.tree_util.tree_map(
      lambda x: search_lib.unflatten_beam_dim(x, 4), flat)
  rows = back['rows'] + jnp.arange(4)[None, :, None] * 10  # beams differ
  picked = search_lib.gather_beams({'rows': rows, 'index': back['index']},
                                 jnp.array([[3, 0], [1, 1]]))
  np.testing.assert_array_equal(picked['rows'][:, :, 0], [[30, 0], [13, 13]])
  assert picked['index'] == 7


@pytest.mark.parametrize('alpha,per_row_step', [(0.6, False), (0.0, True),
                                                (1.0, False)])
def test_large_beam_returns_every_hypothesis_with_its_score(
    alpha, per_row_step):
  max_decode_len, limits = 4, [4, 3]
  tables = np.random.default_rng(0).normal(
      0, 1.5, (2, max_decode_len, VOCAB, VOCAB, VOCAB))
  # 1 + 4 + 16 + 64 = 85 sequences of <= 4 tokens, and at most 16 * 5 = 80
  # candidates at a step: a beam of 85 enumerates everything.
  beam_size = 85
  sequences, scores = search_lib.beam_search(
      make_step_fn(tables), make_cache([0, 1], per_row_step),
      batch_size=2, beam_size=beam_size, max_decode_len=max_decode_len,
      max_lengths=jnp.array(limits), length_penalty=alpha)
  assert sequences.shape == (2, beam_size, max_decode_len)
  for b in range(2):
    expected = all_hypotheses(tables[b], limits[b], alpha)
    n = len(expected)
    np.testing.assert_array_equal(
        sequences[b, :n], [padded(s, max_decode_len) for s, _ in expected])
    np.testing.assert_allclose(scores[b, :n], [s for _, s in expected],
                               rtol=1e-5)
    # Only 21 sequences fit in 3 tokens; the other slots are empty.
    assert np.all(scores[b, n:] == -np.inf)
    assert np.all(sequences[b, n:] == 0)


def test_beam_search_finds_what_greedy_misses():
  # The likelier first word (2) leads to an unsure second step; the other
  # first word (3) is almost surely followed by eos: 0.4 * 0.95 > 0.5 * 0.4.
  probs = np.full((3, VOCAB, VOCAB), 1e-3)
  probs[0, 0, [2, 3, EOS]] = [0.5, 0.4, 0.1]
  probs[1:, :, [2, 3, 4, EOS]] = [0.2, 0.2, 0.2, 0.4]
  probs[1, 2, [2, 3, 4, EOS]] = [0.3, 0.2, 0.1, 0.4]
  probs[1, 3, [2, 3, 4, EOS]] = [0.02, 0.02, 0.01, 0.95]
  logits = np.log(probs)  # [step, previous, next]
  tables = np.broadcast_to(logits[:, None], (3,) + (VOCAB,) * 3)[None]
  step_fn, cache = make_step_fn(tables), make_cache([0])

  greedy = search_lib.greedy_search(step_fn, cache, batch_size=1,
                                  max_decode_len=3)
  sequences, scores = search_lib.beam_search(
      step_fn, cache, batch_size=1, beam_size=2, max_decode_len=3)

  np.testing.assert_array_equal(greedy[0], [2, EOS, 0])
  best, best_score = all_hypotheses(tables[0], 3, 0.6)[0]
  assert best == (3, EOS)
  np.testing.assert_array_equal(sequences[0, 0], [3, EOS, 0])
  assert scores[0, 0] == pytest.approx(best_score, rel=1e-5)
  # Rows sum to 1.002 and 1.001 before normalisation (the 1e-3 fillers).
  by_hand = np.log(0.4 / 1.002 * 0.95 / 1.001) / gnmt_penalty(2, 0.6)
  assert best_score == pytest.approx(by_hand, rel=1e-9)


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_greedy_matches_numpy_and_beam_size_one(seed):
  rng = np.random.default_rng(seed)
  batch_size, max_decode_len = 6, 7
  tables = rng.normal(0, 2.0, (batch_size, max_decode_len) + (VOCAB,) * 3)
  limits = rng.integers(1, max_decode_len + 3, batch_size)
  step_fn, cache = make_step_fn(tables), make_cache(np.arange(batch_size))

  greedy = search_lib.greedy_search(
      step_fn, cache, batch_size=batch_size, max_decode_len=max_decode_len,
      max_lengths=jnp.array(limits))
  # With alpha = 0 the score is the log-probability, so a one-hypothesis beam
  # must follow the argmax path and end where greedy ends.
  sequences, _ = search_lib.beam_search(
      step_fn, cache, batch_size=batch_size, beam_size=1,
      max_decode_len=max_decode_len, max_lengths=jnp.array(limits),
      length_penalty=0.0)

  for b in range(batch_size):
    expected = numpy_greedy(tables[b], min(limits[b], max_decode_len))
    np.testing.assert_array_equal(greedy[b], padded(expected, max_decode_len))
  np.testing.assert_array_equal(sequences[:, 0], greedy)


def test_max_lengths_force_eos():
  max_decode_len = 6
  logits = np.zeros((3, max_decode_len) + (VOCAB,) * 3)
  logits[..., 2] = 5.0  # eos is never the argmax
  step_fn, cache = make_step_fn(logits), make_cache([0, 1, 2])
  expected = [[2, EOS, 0, 0, 0, 0], [2, 2, 2, 2, EOS, 0],
              [2, 2, 2, 2, 2, EOS]]
  max_lengths = jnp.array([2, 5, 9])  # 9 is clipped to max_decode_len

  greedy = search_lib.greedy_search(step_fn, cache, batch_size=3,
                                  max_decode_len=max_decode_len,
                                  max_lengths=max_lengths)
  sequences, scores = search_lib.beam_search(
      step_fn, cache, batch_size=3, beam_size=3,
      max_decode_len=max_decode_len, max_lengths=max_lengths)

  np.testing.assert_array_equal(greedy, expected)
  np.testing.assert_array_equal(sequences[:, 0], expected)
  # Every returned hypothesis ends with eos within its sentence's budget.
  lengths = np.argmax(np.asarray(sequences) == EOS, axis=-1) + 1
  assert np.all(np.any(np.asarray(sequences) == EOS, axis=-1))
  assert np.all(lengths <= np.array([2, 5, 6])[:, None])
  assert np.all(np.isfinite(scores))


def test_greedy_stops_once_every_sentence_ended():
  max_decode_len = 10
  logits = np.zeros((2, max_decode_len) + (VOCAB,) * 3)
  logits[0, :, :, :, EOS] = 5.0  # sentence 0 ends at once
  logits[1, :3, :, :, 2] = 5.0  # sentence 1 says three words first
  logits[1, 3:, :, :, EOS] = 5.0
  step_fn, calls = counting(make_step_fn(logits))

  tokens = search_lib.greedy_search(step_fn, make_cache([0, 1]), batch_size=2,
                                  max_decode_len=max_decode_len)
  jax.effects_barrier()

  np.testing.assert_array_equal(tokens[:, :5], [[EOS, 0, 0, 0, 0],
                                                [2, 2, 2, EOS, 0]])
  assert len(calls) == 4


def test_beam_search_stops_when_no_live_beam_can_win():
  # Word 2 has probability 0.3 and eos 0.7; other tokens are impossible, so
  # the sequences are 2^n eos. After step 1 the finished set is {eos, 2 eos},
  # worst (log .3 + log .7) / lp(2) = -1.423, and the best live log-prob
  # bounds what can still come: 2 log .3 / lp(10) = -1.389 may still win, so
  # step 2 runs; then 3 log .3 / lp(10) = -2.084 cannot: 3 steps, not 10.
  max_decode_len, alpha = 10, 0.6
  logits = np.full((1, max_decode_len) + (VOCAB,) * 3, -1e9)
  logits[..., 2] = np.log(0.3)
  logits[..., EOS] = np.log(0.7)
  step_fn, calls = counting(make_step_fn(logits))

  sequences, scores = search_lib.beam_search(
      step_fn, make_cache([0]), batch_size=1, beam_size=2,
      max_decode_len=max_decode_len, length_penalty=alpha)
  jax.effects_barrier()

  assert len(calls) == 3
  np.testing.assert_array_equal(sequences[0, :, :3], [[EOS, 0, 0],
                                                      [2, EOS, 0]])
  expected = [np.log(0.7),
              (np.log(0.3) + np.log(0.7)) / gnmt_penalty(2, alpha)]
  np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
  # Longer sequences score worse: the early stop lost nothing.
  for words in range(2, max_decode_len):
    longer = (words * np.log(0.3) + np.log(0.7)) / gnmt_penalty(words + 1, alpha)
    assert longer < expected[1]


def test_permuting_the_batch_permutes_the_outputs():
  rng = np.random.default_rng(4)
  batch_size, max_decode_len = 5, 6
  tables = rng.normal(0, 2.0, (batch_size, max_decode_len) + (VOCAB,) * 3)
  limits = np.array([2, 6, 4, 3, 5])
  permutation = np.array([3, 0, 4, 1, 2])

  def decode(rows):
    step_fn, cache = make_step_fn(tables), make_cache(rows)
    common = dict(batch_size=batch_size, max_decode_len=max_decode_len,
                  max_lengths=jnp.array(limits[rows]))
    return (search_lib.greedy_search(step_fn, cache, **common),
            *search_lib.beam_search(step_fn, cache, beam_size=3, **common))

  original = decode(np.arange(batch_size))
  permuted = decode(permutation)
  for before, after in zip(original, permuted):
    np.testing.assert_array_equal(np.asarray(before)[permutation], after)


def test_jitted_searches_do_not_retrace_for_new_values():
  max_decode_len, traces = 5, []
  tables = np.random.default_rng(5).normal(
      0, 2.0, (2, max_decode_len) + (VOCAB,) * 3)
  table_step_fn = make_step_fn(tables)

  def step_fn(tokens, cache):
    traces.append(1)  # runs only while tracing
    return table_step_fn(tokens, cache)

  greedy = jax.jit(functools.partial(
      search_lib.greedy_search, step_fn, batch_size=2,
      max_decode_len=max_decode_len))
  beam = jax.jit(functools.partial(
      search_lib.beam_search, step_fn, batch_size=2, beam_size=3,
      max_decode_len=max_decode_len))

  outputs = []
  for rows, limits in (([0, 1], [5, 5]), ([1, 0], [2, 4])):
    args = (make_cache(rows),)
    kwargs = dict(max_lengths=jnp.array(limits, jnp.int32))
    outputs.append((greedy(*args, **kwargs), beam(*args, **kwargs)[0]))
    if len(outputs) == 1:
      traces_after_first_call = len(traces)

  assert traces_after_first_call > 0
  assert len(traces) == traces_after_first_call
  assert not np.array_equal(outputs[0][0], outputs[1][0])
  np.testing.assert_array_equal(
      outputs[1][0],
      search_lib.greedy_search(make_step_fn(tables), make_cache([1, 0]),
                             batch_size=2, max_decode_len=max_decode_len,
                             max_lengths=jnp.array([2, 4])))


def numpy_constrained_greedy(table, limit, *, min_length=1, n=0):
  """numpy_greedy with the no-repeat rule and a minimum length, written out by hand."""
  fed, tokens = [0, 0], []
  while not tokens or tokens[-1] != EOS:
    logits = np.array(table[len(tokens), fed[-2], fed[-1]], np.float64)
    if n:
      for j in range(len(tokens) - n + 1):
        if tuple(tokens[j:j + n - 1]) == tuple(tokens[len(tokens) - n + 1:]):
          if tokens[j + n - 1] != EOS:
            logits[tokens[j + n - 1]] = -np.inf
    others = np.isfinite(np.delete(logits, EOS)).any()
    if len(tokens) < min_length - 1 and others:
      logits[EOS] = -np.inf
    token = int(np.argmax(logits))
    tokens.append(EOS if len(tokens) == limit - 1 else token)
    fed.append(tokens[-1])
  return tokens


def ngrams(tokens, n):
  """The n-grams before eos (the fake model may choose token 0 too)."""
  tokens = list(tokens)
  words = tokens[:tokens.index(EOS)] if EOS in tokens else tokens
  return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def test_repeated_ngram_bans_match_a_python_reference():
  rng = np.random.default_rng(6)
  sequences = rng.integers(2, 5, (7, 9))  # Few words, so n-grams repeat often.
  for n in (1, 2, 3):
    for step in range(10):
      bans = np.asarray(search_lib.repeated_ngram_bans(
          jnp.asarray(sequences, jnp.int32), jnp.int32(step), n, VOCAB))
      for row, seq in zip(bans, sequences):
        chosen = list(seq[:step])
        expected = {chosen[j + n - 1] for j in range(step - n + 1)
                    if chosen[j:j + n - 1] == chosen[step - n + 1:step]}
        assert set(np.flatnonzero(row)) == expected, (n, step)


@pytest.mark.parametrize('n', [1, 2, 3])
def test_no_repeat_leaves_no_repeated_ngram(n):
  """A model that loops on its favourite words; the rule leaves no n-gram twice."""
  rng = np.random.default_rng(7)
  batch_size, max_decode_len = 4, 9
  tables = rng.normal(0, 0.5, (batch_size, max_decode_len) + (VOCAB,) * 3)
  tables[..., 2] += 3.0  # Word 2, then word 3, again and again.
  tables[..., 3] += 2.0
  tables[..., EOS] -= 3.0
  step_fn, cache = make_step_fn(tables), make_cache(np.arange(batch_size))
  common = dict(batch_size=batch_size, max_decode_len=max_decode_len)

  looping = search_lib.greedy_search(step_fn, cache, **common)
  assert any(len(set(ngrams(t, n))) < len(ngrams(t, n)) for t in np.asarray(looping))
  greedy = search_lib.greedy_search(step_fn, cache, no_repeat_ngram_size=n, **common)
  sequences, scores = search_lib.beam_search(step_fn, cache, beam_size=3,
                                             no_repeat_ngram_size=n, **common)
  for b in range(batch_size):
    expected = numpy_constrained_greedy(tables[b], max_decode_len, n=n)
    np.testing.assert_array_equal(greedy[b], padded(expected, max_decode_len))
  for tokens in list(np.asarray(greedy)) + list(np.asarray(sequences).reshape(-1, max_decode_len)):
    grams = ngrams(tokens, n)
    assert len(set(grams)) == len(grams), tokens
  assert np.all(np.isfinite(scores))


def test_beam_search_with_no_repeat_returns_the_best_allowed_hypotheses():
  """An exhaustive beam under the rule equals every hypothesis without a repeated 2-gram."""
  max_decode_len, alpha = 5, 0.6
  tables = np.random.default_rng(8).normal(0, 1.5, (1, max_decode_len) + (VOCAB,) * 3)
  sequences, scores = search_lib.beam_search(
      make_step_fn(tables), make_cache([0]), batch_size=1, beam_size=300,
      max_decode_len=max_decode_len, length_penalty=alpha, no_repeat_ngram_size=2)
  expected = [(s, score) for s, score in all_hypotheses(tables[0], max_decode_len, alpha)
              if len(set(ngrams(s, 2))) == len(ngrams(s, 2))]
  n = len(expected)
  np.testing.assert_array_equal(sequences[0, :n], [padded(s, max_decode_len) for s, _ in expected])
  np.testing.assert_allclose(scores[0, :n], [s for _, s in expected], rtol=1e-5)
  assert np.all(scores[0, n:] == -np.inf)


def test_min_lengths_delay_eos():
  rng = np.random.default_rng(9)
  batch_size, max_decode_len = 5, 8
  tables = rng.normal(0, 1.0, (batch_size, max_decode_len) + (VOCAB,) * 3)
  tables[..., EOS] += 4.0  # Eos is the argmax everywhere.
  mins = np.array([1, 3, 5, 8, 20])  # 20 is clipped to the limit.
  step_fn, cache = make_step_fn(tables), make_cache(np.arange(batch_size))
  common = dict(batch_size=batch_size, max_decode_len=max_decode_len,
                min_lengths=jnp.array(mins))
  greedy = search_lib.greedy_search(step_fn, cache, **common)
  sequences, _ = search_lib.beam_search(step_fn, cache, beam_size=2, **common)
  for b in range(batch_size):
    expected = numpy_constrained_greedy(tables[b], max_decode_len, min_length=mins[b])
    assert len(expected) == min(mins[b], max_decode_len)
    np.testing.assert_array_equal(greedy[b], padded(expected, max_decode_len))
  lengths = np.argmax(np.asarray(sequences) == EOS, axis=-1) + 1  # [batch, beam]
  assert np.all(lengths >= np.minimum(mins, max_decode_len)[:, None])


def test_sampling_as_temperature_goes_to_zero_is_greedy():
  rng = np.random.default_rng(10)
  batch_size, max_decode_len = 6, 7
  tables = rng.normal(0, 2.0, (batch_size, max_decode_len) + (VOCAB,) * 3)
  step_fn, cache = make_step_fn(tables), make_cache(np.arange(batch_size))
  common = dict(batch_size=batch_size, max_decode_len=max_decode_len)
  greedy = search_lib.greedy_search(step_fn, cache, **common)
  cold = search_lib.greedy_search(step_fn, cache, sampling=search_lib.Sampling(
      temperature=1e-4, seed=3), **common)
  hot = search_lib.greedy_search(step_fn, cache, sampling=search_lib.Sampling(
      temperature=5.0, seed=3), **common)
  np.testing.assert_array_equal(cold, greedy)
  assert not np.array_equal(hot, greedy)  # So the cold run really sampled.


@pytest.mark.parametrize('spec', ['temperature:0.7', 'top_k:2', 'top_p:0.6',
                                  'top_k:3,temperature:1.5'])
def test_sampling_frequencies_match_the_truncated_distribution(spec):
  """4,000 one-token samples against the NumPy distribution after temperature/top-k/top-p."""
  rows = 4000
  logits = np.log(np.array([1e-9, 0.05, 0.45, 0.3, 0.2]))  # pad, eos, words 2..4
  tables = np.broadcast_to(logits, (1, 2) + (VOCAB,) * 3)
  sampling = search_lib.Sampling.parse(spec, seed=0)
  tokens = search_lib.greedy_search(
      make_step_fn(tables), make_cache(np.zeros(rows, int)), batch_size=rows,
      max_decode_len=2, sampling=sampling)
  counts = np.bincount(np.asarray(tokens[:, 0]), minlength=VOCAB) / rows

  scaled = logits / sampling.temperature
  order = np.argsort(-scaled)
  keep = np.zeros(VOCAB, bool)
  keep[order[:sampling.top_k or VOCAB]] = True
  probs = np.exp(scaled - scaled.max())
  probs /= probs.sum()
  mass = 0.0
  for i, token in enumerate(order):
    if mass >= sampling.top_p:
      keep[order[i:]] = False
      break
    mass += probs[token]
  expected = np.where(keep, np.exp(scaled), 0.0)
  expected /= expected.sum()
  assert np.all(counts[~keep] == 0)
  np.testing.assert_allclose(counts, expected, atol=4 * np.sqrt(0.25 / rows))


def test_sampling_is_reproducible_and_follows_the_sentence():
  rng = np.random.default_rng(11)
  batch_size, max_decode_len = 6, 7
  tables = rng.normal(0, 1.0, (batch_size, max_decode_len) + (VOCAB,) * 3)
  permutation = np.array([4, 2, 0, 5, 1, 3])

  def sample(rows, seed):
    return np.asarray(search_lib.greedy_search(
        make_step_fn(tables), make_cache(rows), batch_size=batch_size,
        max_decode_len=max_decode_len, row_ids=jnp.asarray(rows, jnp.int32),
        sampling=search_lib.Sampling(temperature=1.0, seed=seed)))

  first = sample(np.arange(batch_size), 1)
  np.testing.assert_array_equal(sample(np.arange(batch_size), 1), first)
  np.testing.assert_array_equal(sample(permutation, 1), first[permutation])
  assert not np.array_equal(sample(np.arange(batch_size), 2), first)


@pytest.mark.parametrize('spec, message', [
    ('temperature:0', 'must be > 0'), ('top_k:0', 'must be >= 1'), ('top_p:1.5', r'\(0, 1\]'),
    ('top_k:2.5', 'an integer'), ('beam:3', 'give temperature:T'),
    ('top_k:2,top_k:3', 'each once'), ('temperature', 'give temperature:T')])
def test_bad_sampling_specs_are_named(spec, message):
  with pytest.raises(ValueError, match=message):
    search_lib.Sampling.parse(spec)
