"""Each normalization against NumPy written from its paper's formula."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import norms

# [batch 2, length 3, features 5]; the last token of row 1 is padding.
X = np.random.default_rng(0).normal(2.0, 3.0, size=(2, 3, 5)).astype(np.float32)
MASK = np.array([[True, True, True], [True, True, False]])


def apply(module, x=X, mask=MASK, train=False, perturb=True, **kwargs):
  """Output of `module` with every parameter perturbed away from its initial value."""
  variables = module.init(jax.random.key(0), x, mask, train=False)
  params = jax.tree.map(lambda p: p + 0.5 * np.arange(1, p.size + 1).reshape(p.shape) / p.size,
                        variables.get('params', {})) if perturb else variables.get('params', {})
  variables = {**variables, 'params': params}
  out, updates = module.apply(variables, x, mask, train, mutable=['batch_stats'], **kwargs)
  return np.asarray(out), jax.tree.map(np.asarray, params), updates


def test_layer_norm():
  out, p, _ = apply(norms.LayerNorm())
  mean, var = X.mean(-1, keepdims=True), X.var(-1, keepdims=True)
  np.testing.assert_allclose(out, (X - mean) / np.sqrt(var + 1e-6) * p['scale'] + p['bias'],
                             rtol=1e-5, atol=1e-5)


def test_rms_norm():
  out, p, _ = apply(norms.RMSNorm())
  rms = np.sqrt(np.mean(X ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out, X / rms * p['scale'], rtol=1e-5, atol=1e-5)


def test_scale_norm_starts_at_sqrt_d():
  out, _, _ = apply(norms.ScaleNorm(), perturb=False)
  expected = np.sqrt(5) * X / np.linalg.norm(X, axis=-1, keepdims=True)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_statistics_skip_padding_and_update_running_averages():
  """Train: statistics of the 5 real tokens only; eval: the running averages instead."""
  module = norms.BatchNorm(momentum=0.9)
  out, p, updates = apply(module, train=True)
  real = X[MASK]  # [5 tokens, 5 features]
  mean, var = real.mean(0), real.var(0)
  expected = (X - mean) / np.sqrt(var + 1e-5) * p['scale'] + p['bias']
  np.testing.assert_allclose(out[MASK], expected[MASK], rtol=1e-5, atol=1e-5)
  stats = updates['batch_stats']
  np.testing.assert_allclose(stats['mean'], 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * var, rtol=1e-5)
  changed_padding = X.copy()
  changed_padding[1, 2] = 1e3
  again, _, _ = apply(module, x=changed_padding, train=True)
  np.testing.assert_allclose(again[MASK], out[MASK], rtol=1e-6)  # Padding moves nothing.


def test_batch_norm_over_devices_uses_the_global_batch():
  """Under shard_map with axis_name, each device normalizes with the whole batch's stats."""
  module = norms.BatchNorm(axis_name='data')
  whole, _, _ = apply(norms.BatchNorm(), train=True)
  mesh = jax.make_mesh((2,), ('data',), devices=jax.devices()[:2])
  variables = module.init(jax.random.key(0), X, MASK, train=False)
  variables = {**variables, 'params': jax.tree.map(
      lambda p: p + 0.5 * np.arange(1, p.size + 1).reshape(p.shape) / p.size,
      variables['params'])}
  run = functools.partial(module.apply, train=True, mutable=['batch_stats'])
  sharded = jax.jit(jax.shard_map(lambda v, x, m: run(v, x, m)[0], mesh=mesh,
                          in_specs=(jax.sharding.PartitionSpec(),
                                    jax.sharding.PartitionSpec('data'),
                                    jax.sharding.PartitionSpec('data')),
                          out_specs=jax.sharding.PartitionSpec('data')))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  out = sharded(variables, jax.device_put(X, split), jax.device_put(MASK, split))
  np.testing.assert_allclose(np.asarray(out), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', sorted(norms.NORMS))
def test_bfloat16_input_keeps_float32_statistics(name):
  """Statistics in float32, output in the input's dtype; close to the float32 result."""
  module = norms.NORMS[name](type('Config', (), {'batch_norm_axis_name': ''})(), None)
  out32, _, _ = apply(module, train=True)
  out16, _, _ = apply(module, x=X.astype(jnp.bfloat16), train=True)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(np.float32), out32, rtol=2e-2, atol=5e-2)
