"""Where the training step's time goes: a jax.profiler trace, its XLA ops grouped by kind.

  python -m benchmarks.step_profile [--config=...] [--batches=packed|fixed] [--steps=3]
  python -m benchmarks.step_profile --config.vocab_size=8000 --config.model.emb_dim=256 \
      --config.model.qkv_dim=256 --config.model.mlp_dim=1024     # the reference size

Traces --steps steady-state steps of train.py's step (after compilation and warm-up) with
`jax.profiler.trace`, writes the trace (TensorBoard/XProf, Perfetto) to --trace_dir, and
prints the op time per step summed over threads, grouped by kind: matrix multiplications
(XLA:CPU's library dot fusions), layout copies and transposes, the other fusions
(elementwise and reductions: norms, softmax, dropout, Adam), and the rest. The sum over
threads exceeds the step time when ops run side by side. On CPU, op-level events need
XLA's `--xla_cpu_enable_xprof_traceme`, which this script adds to XLA_FLAGS.
"""

import glob
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from benchmarks import batches as batches_lib
from benchmarks import machine
from benchmarks import profile_trace

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/baseline.py:small',
                                          'Experiment config file (its model is profiled).')
_BATCHES = flags.DEFINE_enum('batches', 'packed', ['packed', 'fixed'],
                             'Real packed batches, or fixed 64 x 64 random ones.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Traced steps.')
_TRACE_DIR = flags.DEFINE_string('trace_dir', None, 'Where the trace goes (default: a temp dir).')
_TOP = flags.DEFINE_integer('top', 12, 'Single ops listed after the table of kinds.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Read when the CPU client starts, which is below (no JAX computation has run yet).
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_enable_xprof_traceme=true').strip()
  config = _CONFIG.value
  batches = (batches_lib.packed_batches(config, 4) if _BATCHES.value == 'packed' else
             batches_lib.fixed_batches(config, batches_lib.FIXED_ROWS,
                                       batches_lib.FIXED_LENGTH, 4))
  step, state, device_batches = batches_lib.jax_train_step(config, batches)
  for i in range(3):  # Warm up.
    state, metrics = step(state, device_batches[i % len(device_batches)])
  jax.block_until_ready((state, metrics))

  trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix='step_profile_')
  start = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for i in range(_STEPS.value):
      state, metrics = step(state, device_batches[i % len(device_batches)])
    jax.block_until_ready((state, metrics))
  step_ms = 1e3 * (time.perf_counter() - start) / _STEPS.value
  trace_file = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'),
                                recursive=True))[-1]
  by_kind, per_op = profile_trace.summarize(trace_file, _STEPS.value)
  if not by_kind:
    raise RuntimeError(f'{trace_file} holds no XLA op events: was the backend started before '
                       'XLA_FLAGS was set?')
  total = sum(by_kind.values())

  rows, length = batches[0]['targets'].shape
  print(f'\nWhere a training step goes: {config.scale} config, d_model {config.model.emb_dim}, '
        f'FFN {config.model.mlp_dim}, vocab {config.vocab_size}, {_BATCHES.value} batches of '
        f'{rows} x {batches[0]["inputs"].shape[1]}/{length}')
  for key, value in machine.describe().items():
    print(f'  {key:12s} {value}')
  print(f'  step         {step_ms:.0f} ms wall (traced, so a little slower than untraced)')
  print(f'  trace        {trace_dir}\n')
  print(f'{"op kind":44s} {"ms/step (all threads)":>22s} {"share":>6s}')
  for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1]):
    print(f'{kind:44s} {ms:22.1f} {ms / total:6.1%}')
  print(f'{"total":44s} {total:22.1f}\n\nHeaviest single ops (ms/step):')
  for name, ms in per_op[:_TOP.value]:
    print(f'  {ms:8.1f}  {name}')


if __name__ == '__main__':
  app.run(main)
