"""models.Dropout and models.weight_dot_general: the training step's fast paths, checked
against flax's nn.Dropout, binomial statistics, and JAX's own dot_general gradient."""

import dataclasses

import flax.linen as nn
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


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('rate', [0.1, 0.3, 0.5, 0.77])
def test_dropout_equals_flax_dropout_bit_for_bit(rate, dtype):
  """The same mask and values as nn.Dropout from the same key, so training is unchanged."""
  x = jax.random.normal(jax.random.key(1), (3, 5, 7), dtype)
  for seed in range(3):
    key = jax.random.key(seed)
    new = apply_dropout(models.Dropout(rate), x, key)
    old = apply_dropout(nn.Dropout(rate), x, key)
    np.testing.assert_array_equal(new, old)
    eager = apply_dropout(models.Dropout(rate), x, key, jit=False)
    np.testing.assert_array_equal(eager, apply_dropout(nn.Dropout(rate), x, key, jit=False))


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
