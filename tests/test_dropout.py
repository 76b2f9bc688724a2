"""models.Dropout and models.weight_dot_general: the training step's fast paths, checked
against Threefry in NumPy, binomial statistics, and JAX's own dot_general gradient."""

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from tests.test_models import SRC, TGT, tiny_config
from transformer import models


def apply_dropout(module, x, key, *, jit=True):
  fn = lambda x: module.apply({}, x, deterministic=False, rngs={'dropout': key})
  return (jax.jit(fn) if jit else fn)(x)


def threefry_2x32(key: tuple[int, int], counters: np.ndarray) -> np.ndarray:
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011, SC'11), in NumPy: [n, 2] -> [n, 2]."""
  def rotate(v, r):
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))
  k0, k1 = np.uint32(key[0]), np.uint32(key[1])
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
  x0 = counters[:, 0].astype(np.uint32) + ks[0]
  x1 = counters[:, 1].astype(np.uint32) + ks[1]
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  for block in range(5):
    for r in rotations[block % 2]:
      x0 = x0 + x1
      x1 = rotate(x1, r) ^ x0
    x0 = x0 + ks[(block + 1) % 3]
    x1 = x1 + ks[(block + 2) % 3] + np.uint32(block + 1)
  return np.stack([x0, x1], axis=1)


def test_numpy_threefry_reproduces_the_papers_known_answers():
  """Random123's known-answer vectors for threefry2x32_20."""
  with np.errstate(over='ignore'):
    for key, counter, expected in [
        ((0, 0), (0, 0), (0x6b200159, 0x99ba4efe)),
        ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
        ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0))]:
      got = threefry_2x32(key, np.array([counter], np.uint32))[0]
      assert tuple(int(w) for w in got) == expected


@pytest.mark.parametrize('shape', [(8,), (7,), (3, 5), (4, 6), (2, 3, 4)])
def test_random_bits_are_threefry_words_each_used_once(shape):
  """Every word is Threefry-2x32 of the key and a counter (0, 1, ...), and no word repeats:
  the bits of jax.random.bits, independent uniform words. In 1-D, also their exact order."""
  key = jax.random.key(11)
  key_words = tuple(int(w) for w in jax.random.key_data(key))
  bits = np.asarray(jax.jit(models.random_bits, static_argnums=1)(key, shape)).ravel()
  n = bits.size
  with np.errstate(over='ignore'):
    counters = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.uint32)
    words = threefry_2x32(key_words, counters)  # [counter, half]
  where = {int(w): (c, h) for (c, h), w in np.ndenumerate(words)}
  assert len(where) == words.size  # A sanity check of the reference: no collisions.
  drawn = [where.get(int(b)) for b in bits]
  assert None not in drawn
  assert len(set(drawn)) == n
  if len(shape) == 1:
    assert drawn == [(i // 2, i % 2) for i in range(n)]


def test_random_bits_of_another_prng_are_jax_random_bits():
  key = jax.random.key(5, impl='rbg')
  np.testing.assert_array_equal(models.random_bits(key, (3, 4)),
                                jax.random.bits(key, (3, 4), jnp.uint32))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('rate', [0.1, 0.5, 0.77])
def test_dropout_is_the_keep_threshold_applied_to_random_bits(rate, dtype):
  """Jitted or not: x / (1 - rate) where (bits >> 9) < keep_threshold(rate), else 0."""
  x = jax.random.normal(jax.random.key(1), (3, 5, 7), dtype)
  for seed in range(3):
    key = jax.random.key(seed)
    # The key Dropout draws: make_rng('dropout') in a module at the top level.
    drawn = models.Dropout(rate).apply({}, rngs={'dropout': key},
                                       method=lambda m: m.make_rng('dropout'))
    bits = np.asarray(models.random_bits(drawn, x.shape))
    keep = (bits >> 9) < models.keep_threshold(rate)
    expected = np.where(keep, np.asarray(x / (1 - rate)), 0)
    np.testing.assert_array_equal(apply_dropout(models.Dropout(rate), x, key), expected)
    np.testing.assert_array_equal(apply_dropout(models.Dropout(rate), x, key, jit=False),
                                  expected)


@pytest.mark.parametrize('rate', [0.1, 0.3])
def test_dropout_keeps_one_minus_rate_and_scales_by_one_over_keep(rate):
  n = 200_000
  x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 2.0, n), jnp.float32)  # Never 0.
  out = np.asarray(apply_dropout(models.Dropout(rate), x, jax.random.key(7)))
  kept = out != 0
  keep = 1 - rate
  # 5 standard deviations of a binomial proportion.
  assert abs(kept.mean() - keep) < 5 * np.sqrt(keep * rate / n)
  np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / keep, rtol=1e-6)


def test_keep_threshold_matches_uniform_comparison():
  """Every 23-bit mantissa value m: (m < threshold) == (m * 2**-23 < float32(1 - rate))."""
  m = np.arange(2 ** 23, dtype=np.float64)
  for rate in (0.1, 0.25, 0.3, 1e-7, 0.999):
    keep = float(np.float32(1 - rate))
    assert np.array_equal(m < models.keep_threshold(rate), m * 2.0 ** -23 < keep)


def correlation(a, b):
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return np.corrcoef(a, b)[0, 1]


def sublayer_masks(cfg, key):
  """{dropout path: keep mask} of every Dropout in one training pass of the Transformer."""
  model = models.Transformer(cfg)
  variables = model.init(jax.random.key(0), SRC, TGT, train=False)
  _, state = model.apply(variables, SRC, TGT, train=True, rngs={'dropout': key},
                         capture_intermediates=lambda mdl, _: (
                             isinstance(mdl, models.Dropout) and mdl.rate > 0),
                         mutable=['intermediates'])
  flat = jax.tree_util.tree_leaves_with_path(state['intermediates'])
  # Sublayers also sow their RMS into this collection; the Dropout outputs are '__call__'.
  return {jax.tree_util.keystr(path): np.asarray(out) != 0 for path, out in flat
          if '__call__' in jax.tree_util.keystr(path)}


def test_dropout_masks_are_independent_across_positions_layers_and_steps():
  """No two positions, sublayers or steps share a mask: every pairwise correlation is ~0.

  Independent masks correlate by 0 +- 1/sqrt(n); a shared or shifted mask would give 1.
  """
  cfg = dataclasses.replace(tiny_config(), dropout_rate=0.5, emb_dim=256, qkv_dim=256,
                            mlp_dim=64, num_layers=3)
  key = jax.random.key(3)
  step0 = sublayer_masks(cfg, jax.random.fold_in(key, 0))  # steps.py: fold_in(rng, step).
  step1 = sublayer_masks(cfg, jax.random.fold_in(key, 1))
  # One per embedding (source, target) and one per sublayer: 2 + 3 * (2 + 3).
  assert len(step0) == 2 + 3 * 5
  names = sorted(step0)
  for mask in step0.values():
    assert abs(mask.mean() - 0.5) < 5 * 0.5 / np.sqrt(mask.size)
    # Neighbouring positions of a sentence, and neighbouring features.
    assert abs(correlation(mask[:, 1:], mask[:, :-1])) < 5 / np.sqrt(mask[:, 1:].size)
    assert abs(correlation(mask[..., 1:], mask[..., :-1])) < 5 / np.sqrt(mask[..., 1:].size)
  for i, a in enumerate(names):
    assert abs(correlation(step0[a], step1[a])) < 5 / np.sqrt(step0[a].size)
    for b in names[i + 1:]:
      if step0[a].shape == step0[b].shape:
        assert abs(correlation(step0[a], step0[b])) < 5 / np.sqrt(step0[a].size), (a, b)


# (x shape, kernel shape, dimension numbers): nn.Dense, the q/k/v DenseGeneral, its output
# DenseGeneral over (heads, head_dim), and the tied output projection (x @ embedding.T);
# each with fewer and with more input than output features.
DOTS = [
    ((2, 3, 5), (5, 7), (((2,), (0,)), ((), ()))),
    ((2, 3, 7), (7, 5), (((2,), (0,)), ((), ()))),
    ((2, 3, 6), (6, 2, 4), (((2,), (0,)), ((), ()))),
    ((2, 3, 2, 4), (2, 4, 5), (((2, 3), (0, 1)), ((), ()))),
    ((2, 3, 2, 4), (2, 4, 11), (((2, 3), (0, 1)), ((), ()))),
    ((2, 3, 5), (11, 5), (((2,), (1,)), ((), ()))),
    ((2, 3, 13), (11, 13), (((2,), (1,)), ((), ()))),
]


@pytest.mark.parametrize('x_shape,k_shape,dims', DOTS)
def test_weight_dot_general_has_jax_dot_general_value_and_gradients(x_shape, k_shape, dims):
  rng = np.random.default_rng(sum(x_shape) + sum(k_shape))
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
  out_shape = lax.dot_general(x, kernel, dims).shape
  g = jnp.asarray(rng.normal(size=out_shape), jnp.float32)

  def vjp(dot):
    out, pullback = jax.vjp(lambda x, k: dot(x, k, dims), x, kernel)
    return (out,) + pullback(g)

  mine = jax.jit(lambda: vjp(models.weight_dot_general))()
  ref = jax.jit(lambda: vjp(lax.dot_general))()
  for a, b in zip(mine, ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # And an independent NumPy weight gradient: sum over rows of x (x) g, in the kernel's axes.
  (x_in, k_in), _ = dims
  rows = [d for d in range(x.ndim) if d not in x_in]
  xn = np.moveaxis(np.asarray(x), rows, range(len(rows))).reshape(-1, *[x.shape[d] for d in x_in])
  gn = np.asarray(g).reshape(xn.shape[0], -1)
  outer = np.einsum('ni,no->io', xn.reshape(xn.shape[0], -1), gn)
  k_out = [d for d in range(kernel.ndim) if d not in k_in]
  expected = outer.reshape([x.shape[d] for d in x_in] + [kernel.shape[d] for d in k_out])
  expected = np.moveaxis(expected, range(len(x_in)), k_in)
  np.testing.assert_allclose(mine[2], expected, rtol=1e-4, atol=1e-4)
