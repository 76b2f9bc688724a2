r"""KV-cache memory of decoding: a table from models.cache_bytes, checked, and a plot.

  python -m benchmarks.kv_cache_memory                        # Transformer-base (full)
  python -m benchmarks.kv_cache_memory --config=configs/baseline.py:small

The formula is checked against the cache pytree that Transformer.init_cache really builds
(jax.eval_shape: shapes and dtypes, nothing allocated) for a few points before the table
is printed. The plot shows bytes against decoded length for one batch: the self-attention
keys/values grow by one position per step, the cross-attention ones are fixed by the source.
"""

import dataclasses
import math
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from benchmarks import machine
from transformer import models

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'baseline.py'),
    'Config whose model is measured (default: the full Transformer-base).')
_PLOT = flags.DEFINE_string(
    'plot', os.path.join(os.path.dirname(__file__), 'results', 'kv_cache_memory.png'),
    'Where the PNG of bytes against decoded length goes.')
_SOURCE_LEN = flags.DEFINE_integer('plot_source_len', 64, 'Source tokens in the plot.')
_BATCH = flags.DEFINE_integer('plot_batch', 64, 'Sentences in the plot (times the beam).')
_BEAM = flags.DEFINE_integer('plot_beam', 4, 'Beam width in the plot.')

BATCHES = (1, 16, 64)
BEAMS = (1, 4)
SOURCE_LENGTHS = (16, 64, 256)
DTYPES = ('float32', 'bfloat16')
CHECKS = ((2, 1, 16, 24, 'float32'), (3, 4, 32, 16, 'bfloat16'), (1, 4, 64, 128, 'float32'))


def real_cache_bytes(model, batch: int, beam: int, source_len: int, max_decode_len: int) -> int:
  """Sum of nbytes of the leaves init_cache returns for batch*beam rows (shapes only)."""
  dummy = jnp.ones((1, 8), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))
  inputs = jax.ShapeDtypeStruct((batch * beam, source_len), jnp.int32)
  cache = jax.eval_shape(
      lambda v, x: model.apply(v, x, max_decode_len, method=model.init_cache), variables, inputs)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(cache))


def mib(num_bytes: int) -> str:
  return f'{num_bytes / 2**20:,.1f}'


def main(argv):
  del argv
  base = models.make_model(_CONFIG.value).config
  for key, value in machine.describe().items():
    print(f'{key}: {value}')
  print(f'Model: {base.num_layers} decoder layers, qkv_dim {base.qkv_dim}, '
        f'{base.num_heads} heads')
  for batch, beam, source_len, max_decode_len, dtype in CHECKS:
    cfg = dataclasses.replace(base, dtype=dtype)
    formula = models.cache_bytes(cfg, batch=batch, beam=beam, source_len=source_len,
                                 max_decode_len=max_decode_len)
    real = real_cache_bytes(models.Transformer(cfg), batch, beam, source_len, max_decode_len)
    if formula != real:
      raise AssertionError(f'cache_bytes {formula} != init_cache {real} at batch {batch}, '
                           f'beam {beam}, source {source_len}, decoded {max_decode_len}, {dtype}')
    print(f'checked: batch {batch} beam {beam} source {source_len} decoded {max_decode_len} '
          f'{dtype}: formula = init_cache = {real:,} bytes')

  print(f'\nDecoded length from the source by the decode rule: ceil(1.5 * source + 10), at '
        f'most max_len {base.max_len}.')
  print(f'{"dtype":<9} {"batch":>5} {"beam":>4} {"source":>6} {"decoded":>7} {"self MiB":>9} '
        f'{"cross MiB":>9} {"total MiB":>9}')
  for dtype in DTYPES:
    cfg = dataclasses.replace(base, dtype=dtype)
    for batch in BATCHES:
      for beam in BEAMS:
        for source_len in SOURCE_LENGTHS:
          decoded = min(math.ceil(1.5 * source_len + 10), base.max_len)
          args = dict(batch=batch, beam=beam, source_len=source_len, max_decode_len=decoded)
          total = models.cache_bytes(cfg, **args)
          fixed = models.cache_bytes(cfg, **args, step=0)  # Cross K/V, source mask, index.
          print(f'{dtype:<9} {batch:>5} {beam:>4} {source_len:>6} {decoded:>7} '
                f'{mib(total - fixed):>9} {mib(fixed):>9} {mib(total):>9}')

  args = dict(batch=_BATCH.value, beam=_BEAM.value, source_len=_SOURCE_LEN.value,
              max_decode_len=base.max_len)
  steps = list(range(base.max_len + 1))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for dtype, style in zip(DTYPES, ('-', '--')):
    cfg = dataclasses.replace(base, dtype=dtype)
    fixed = models.cache_bytes(cfg, **args, step=0)
    used = [models.cache_bytes(cfg, **args, step=s) / 2**20 for s in steps]
    ax.plot(steps, used, style, color='C0', label=f'used: cross + self up to the step, {dtype}')
    ax.axhline(fixed / 2**20, linestyle=style, color='C1', label=f'cross-attention, {dtype}')
    ax.axhline(models.cache_bytes(cfg, **args) / 2**20, linestyle=style, color='C2',
               label=f'allocated (max_decode_len {base.max_len}), {dtype}')
  ax.set(xlabel='decoded tokens', ylabel='MiB',
         title=f'KV cache: batch {args["batch"]} x beam {args["beam"]}, source '
               f'{args["source_len"]} tokens, {base.num_layers} layers, qkv {base.qkv_dim}')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(_PLOT.value)), exist_ok=True)
  fig.savefig(_PLOT.value, dpi=110)
  print(f'\nPlot: {_PLOT.value}')


if __name__ == '__main__':
  app.run(main)
