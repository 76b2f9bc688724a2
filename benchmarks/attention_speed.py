"""jax.nn.dot_product_attention vs an einsum: which the model should use, measured.

  python -m benchmarks.attention_speed [--batch=16 --length=128 --heads=4 --head_dim=32]

Times the attention core alone (forward, and forward + backward) under jit at the small
config's shapes, with a padding mask like the model's, and checks both give the same output.
On a GPU, jax.nn.dot_product_attention can pick cuDNN's fused kernel (implementation=None).
"""


from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine

_BATCH = flags.DEFINE_integer('batch', 16, 'Rows per batch.')
_LENGTH = flags.DEFINE_integer('length', 128, 'Query and key length.')
_HEADS = flags.DEFINE_integer('heads', 4, 'Attention heads.')
_HEAD_DIM = flags.DEFINE_integer('head_dim', 32, 'Width of one head.')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed calls (best of them is reported).')


def einsum_attention(query, keys, values, mask):
  """The model's einsum path (models.MultiHeadAttention._einsum_attention, no dropout)."""
  logits = jnp.einsum('bqhd,bkhd->bhqk', query * query.shape[-1] ** -0.5, keys)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1), values)


def xla_attention(query, keys, values, mask):
  return jax.nn.dot_product_attention(query, keys, values, mask=mask)


def main(argv):
  del argv
  b, l, h, d = _BATCH.value, _LENGTH.value, _HEADS.value, _HEAD_DIM.value
  rng = np.random.default_rng(0)
  query, keys, values = (jnp.asarray(rng.normal(size=(b, l, h, d)), jnp.float32)
                         for _ in range(3))
  lengths = rng.integers(l // 4, l + 1, size=b)
  valid = np.arange(l)[None] < lengths[:, None]
  mask = jnp.asarray(valid[:, None, :, None] & valid[:, None, None, :])
  impls = {'einsum': einsum_attention, 'xla (jax.nn.dot_product_attention)': xla_attention}
  outputs = {name: jax.jit(fn)(query, keys, values, mask) for name, fn in impls.items()}
  first, second = outputs.values()
  np.testing.assert_allclose(np.asarray(first)[valid], np.asarray(second)[valid],
                             rtol=1e-4, atol=1e-5)
  for key, value in machine.describe().items():
    print(f'{key}: {value}')
  print(f'Attention core, batch {b}, length {l}, {h} heads of {d}, float32, padding mask; '
        f'best of {_REPEATS.value}. Outputs agree to 1e-4.')
  print('| implementation | forward (ms) | forward + backward (ms) |')
  print('|---|---|---|')
  for name, fn in impls.items():
    forward = jax.jit(fn)
    grad = jax.jit(jax.grad(lambda q, k, v, m, fn=fn: jnp.sum(fn(q, k, v, m) ** 2),
                            argnums=(0, 1, 2)))
    f_ms = 1e3 * machine.best_seconds(forward, query, keys, values, mask, repeats=_REPEATS.value)
    g_ms = 1e3 * machine.best_seconds(grad, query, keys, values, mask, repeats=_REPEATS.value)
    print(f'| {name} | {f_ms:.2f} | {g_ms:.2f} |')


if __name__ == '__main__':
  app.run(main)
