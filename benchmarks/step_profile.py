"""Where the training step's time goes: a jax.profiler trace, its XLA ops grouped by kind.

  python -m benchmarks.step_profile [--config=...] [--batches=packed|fixed] [--steps=3]
  python -m benchmarks.step_profile --config.vocab_size=8000 --config.model.emb_dim=256 \
      --config.model.qkv_dim=256 --config.model.mlp_dim=1024     # the reference size

Traces --steps steady-state steps of train.py's step (after compilation and warm-up) with
`jax.profiler.trace`, writes the trace (TensorBoard/XProf, Perfetto) to --trace_dir, and
prints the op time per step summed over threads, grouped by kind: matrix multiplications
(XLA:CPU's library dot fusions), layout copies and transposes, the other fusions
(elementwise and reductions: norms, softmax, dropout, Adam), and the rest. The sum over
threads exceeds the step time when ops run side by side. Then it sums the layout copies
by the JAX operation that the compiled HLO's metadata names for each (layer numbers folded).
That is the operation XLA fused *into* the copy, not what the copy is for: most copies
transpose an operand of the matmul that reads them, which XLA:CPU's library matmuls want
untransposed (docs/RESULTS.md, "Layout copies of the training step").
On CPU, op-level events need XLA's `--xla_cpu_enable_xprof_traceme`, which this script adds
to XLA_FLAGS.
"""

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
_HLO_OUT = flags.DEFINE_string('hlo_out', None, "Also write the compiled step's HLO text here "
                               '(which ops XLA fused into each copy).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  profile_trace.enable_op_events()  # No JAX computation has run yet.
  config = _CONFIG.value
  batches = (batches_lib.packed_batches(config, 4) if _BATCHES.value == 'packed' else
             batches_lib.fixed_batches(config, batches_lib.FIXED_ROWS,
                                       batches_lib.FIXED_LENGTH, 4))
  step, state, device_batches = batches_lib.jax_train_step(config, batches)
  for i in range(3):  # Warm up.
    state, metrics = step(state, device_batches[i % len(device_batches)])
  jax.block_until_ready((state, metrics))

  batch_index = iter(range(3, 3 + _STEPS.value))

  def one_step():
    nonlocal state
    state, metrics = step(state, device_batches[next(batch_index) % len(device_batches)])
    jax.block_until_ready(metrics)

  step_ms, by_kind, per_op, trace_dir = profile_trace.trace(one_step, _STEPS.value,
                                                            _TRACE_DIR.value)

  rows, length = batches[0]['targets'].shape
  print(f'\nWhere a training step goes: {config.scale} config, d_model {config.model.emb_dim}, '
        f'FFN {config.model.mlp_dim}, vocab {config.vocab_size}, {_BATCHES.value} batches of '
        f'{rows} x {batches[0]["inputs"].shape[1]}/{length}')
  for key, value in machine.describe().items():
    print(f'  {key:12s} {value}')
  print(f'  step         {step_ms:.0f} ms wall (traced, so a little slower than untraced)')
  print(f'  trace        {trace_dir}\n')
  profile_trace.print_table(by_kind, per_op, unit='step', top=_TOP.value)
  copies = 'layout copies / transposes'
  print(f'\n{copies.capitalize()} by the JAX operation XLA fused them with (ms/step):')
  hlo = step.as_text()
  if _HLO_OUT.value:
    with open(_HLO_OUT.value, 'w') as f:
      f.write(hlo)
  sources = profile_trace.op_sources(hlo)
  for source, ms in profile_trace.time_by_source(per_op, sources, copies)[:_TOP.value]:
    print(f'  {ms:8.1f}  {source}')


if __name__ == '__main__':
  app.run(main)
