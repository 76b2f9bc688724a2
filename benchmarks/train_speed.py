"""Speed of the real training step: target tokens/s, MFU, and what an IWSLT2017 run would take.

  python -m benchmarks.train_speed --config=configs/baseline.py:small
  python -m benchmarks.train_speed --config=configs/baseline.py --steps=10   # on a GPU

Times the step train.py runs (steps.py: shard_map'd train_step, Adam, donated state) on
fixed batches, steady state only (compilation and --warmup_steps excluded, every step ended
by block_until_ready), and, with --twin, the PyTorch twin (benchmarks/torch_twin.py) on the
same batches from the same parameters. Two kinds of batch:
  packed: real Bible (or IWSLT) batches from the input pipeline, config.batch_size rows of
          config.max_length source and config.max_target_length target tokens; tokens/s
          counts real target tokens only.
  fixed:  random tokens, 64 x 64 source and target, no padding: the shape of the reference
          figure (REFERENCE below). To compare with it, give the model its sizes:
          --batches=fixed --config.vocab_size=8000 --config.model.emb_dim=256
          --config.model.qkv_dim=256 --config.model.mlp_dim=1024
MFU is model FLOPs (transformer/flops.py) over the device peak (benchmarks/machine.py).
"""

import dataclasses
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import numpy as np

from benchmarks import batches as batches_lib
from benchmarks import machine
from transformer import flops as model_flops
from transformer import losses
from transformer import models

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/baseline.py:small',
                                          'Experiment config file (its model is timed).')
_BATCHES = flags.DEFINE_enum('batches', 'both', ['packed', 'fixed', 'both'],
                             'Packed pipeline batches, fixed random ones, or both.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps per framework and batch kind.')
_WARMUP = flags.DEFINE_integer('warmup_steps', 3, 'Untimed steps after the compiling one.')
_TWIN = flags.DEFINE_bool('twin', True, 'Also time the PyTorch twin (pip install -e .[bench]).')
_ROWS = flags.DEFINE_integer('batch_rows', None,
                             'Rows per batch; default config.batch_size (packed), 64 (fixed).')
_LENGTH = flags.DEFINE_integer('length', batches_lib.FIXED_LENGTH,
                               'Source and target tokens per row of the fixed batches (packed '
                               'batches take config.max_length/max_target_length).')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 10, 'Distinct batches the steps cycle over.')
_MATMUL_SIZE = flags.DEFINE_integer('peak_matmul_size', 2048, 'Matrix size of the CPU peak.')

# One epoch of IWSLT2017 fr->en training data: ~232k TED sentence pairs, ~4.5 M English
# target tokens with the 16k joint sentencepiece vocabulary, eos included (an estimate).
IWSLT2017_EPOCH_TARGET_TOKENS = 4_500_000
EPOCHS_PER_RUN = 50
SEED_SECONDS_PER_EPOCH = 290  # The seed project's measured epoch (~4 h for 50 epochs).
REFERENCE = ('Reference, same kind of 2-core CPU, fp32, vocab 8k, d_model 256, FFN 1024, '
             '4 heads, 3+3 layers, fixed 64x64 batches: jnp.dot ~100 GFLOP/s; Flax '
             'examples/wmt step ~990 target tok/s (47% of peak); torch.nn.Transformer twin '
             'about the same.')


@dataclasses.dataclass
class Timing:
  """Per-step seconds of the timed steps, and the real target tokens they processed."""
  seconds: list[float]
  real_tokens: int

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  @property
  def tokens_per_second(self) -> float:
    return self.real_tokens / sum(self.seconds)


def _real_tokens(batch) -> int:
  return int(np.sum(batch['targets'] > 0))


def time_jax(config, batches, steps: int, warmup: int):
  """Times steps.py's train step; returns (Timing, XLA FLOPs per step, initial params)."""
  start = time.perf_counter()
  step, state, device_batches = batches_lib.jax_train_step(config, batches)
  logging.info('JAX step built and compiled in %.1f s.', time.perf_counter() - start)
  initial_params = jax.device_get(state.params)
  cost = step.cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']
  for i in range(1 + warmup):
    state, metrics = step(state, device_batches[i % len(batches)])
  jax.block_until_ready((state, metrics))
  seconds, tokens = [], 0
  for i in range(steps):
    batch = device_batches[i % len(batches)]
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - start)
    tokens += _real_tokens(batches[i % len(batches)])
  return Timing(seconds, tokens), xla_flops, initial_params


def time_torch(config, params, batches, steps: int, warmup: int) -> Timing:
  """Times the PyTorch twin's step from the same parameters on the same batches."""
  from benchmarks import torch_twin  # pylint: disable=g-import-not-at-top
  model = torch_twin.Transformer(models.ModelConfig.from_config(config.model))
  torch_twin.load_flax_params(model, params)
  trainer = torch_twin.Trainer(model, config)
  torch_batches = [torch_twin.to_torch(b) for b in batches]
  for i in range(1 + warmup):
    trainer.step(torch_batches[i % len(batches)])
  seconds, tokens = [], 0
  for i in range(steps):
    start = time.perf_counter()
    trainer.step(torch_batches[i % len(batches)])
    seconds.append(time.perf_counter() - start)
    tokens += _real_tokens(batches[i % len(batches)])
  return Timing(seconds, tokens)


def eval_losses(config, params, batch) -> tuple[float, float]:
  """Mean eval cross-entropy of the Flax model and of the twin loaded with its parameters."""
  from benchmarks import torch_twin  # pylint: disable=g-import-not-at-top
  model = models.make_model(config)

  @jax.jit
  def jax_loss(params, batch):
    logits = model.apply(
        {'params': params}, batch['inputs'], batch['targets'],
        inputs_positions=batch.get('inputs_position'),
        targets_positions=batch.get('targets_position'),
        inputs_segmentation=batch.get('inputs_segmentation'),
        targets_segmentation=batch.get('targets_segmentation'), train=False)
    return losses.mean_loss(*losses.cross_entropy(logits, batch['targets']))

  twin = torch_twin.Transformer(model.config)
  torch_twin.load_flax_params(twin, params)
  return float(jax_loss(params, batch)), torch_twin.eval_loss(twin, torch_twin.to_torch(batch))


def _hours(seconds: float) -> str:
  return f'{seconds / 3600:.1f} h'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  model_config = models.ModelConfig.from_config(config.model)
  if _TWIN.value:
    from benchmarks import torch_twin  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    torch_twin.check_twinnable(config)
  peak, peak_source = machine.peak_flops(model_config.dtype, _MATMUL_SIZE.value)

  kinds = ['packed', 'fixed'] if _BATCHES.value == 'both' else [_BATCHES.value]
  rows_table, flops_lines, ratio_lines, epoch_lines, equivalence = [], [], [], [], None
  for kind in kinds:
    run_config = config.copy_and_resolve_references()
    if kind == 'packed':
      run_config.batch_size = _ROWS.value or config.batch_size
      batches = batches_lib.packed_batches(run_config, _NUM_BATCHES.value)
    else:
      batches = batches_lib.fixed_batches(
          run_config, _ROWS.value or batches_lib.FIXED_ROWS, _LENGTH.value, _NUM_BATCHES.value)
    rows, source_len = batches[0]['inputs'].shape
    length = batches[0]['targets'].shape[1]
    shape = f'{rows} x {source_len}/{length}'
    efficiency = np.mean([_real_tokens(b) / b['targets'].size for b in batches])
    flops = model_flops.train_step_flops(model_config, batch=rows, source_len=source_len,
                                         target_len=length)
    logging.info('Timing JAX on %s batches %s.', kind, shape)
    jax_timing, xla_flops, params = time_jax(run_config, batches, _STEPS.value, _WARMUP.value)
    timings = {'jax': jax_timing}
    if _TWIN.value:
      logging.info('Timing PyTorch on %s batches %s.', kind, shape)
      timings['torch'] = time_torch(run_config, params, batches, _STEPS.value, _WARMUP.value)
      if equivalence is None:
        equivalence = (kind, *eval_losses(run_config, params, batches[0]))
    for name, timing in timings.items():
      achieved = flops / timing.median
      rows_table.append((kind, name, shape, f'{100 * efficiency:.1f}%',
                         f'{1e3 * timing.median:.1f}', f'{timing.tokens_per_second:,.0f}',
                         f'{rows * length / timing.median:,.0f}', f'{achieved / 1e9:,.1f}',
                         f'{100 * achieved / peak:.1f}%'))
      epoch = IWSLT2017_EPOCH_TARGET_TOKENS / timing.tokens_per_second
      epoch_lines.append(f'  {kind:6s} {name:5s}  {epoch:8,.0f} s/epoch   '
                         f'{EPOCHS_PER_RUN} epochs: {_hours(EPOCHS_PER_RUN * epoch)}')
    flops_lines.append(f'  {kind} {shape}: formula {flops / 1e9:,.3f} GFLOP, '
                       f'XLA cost analysis {xla_flops / 1e9:,.3f} GFLOP, '
                       f'formula / XLA = {flops / xla_flops:.3f}')
    if 'torch' in timings:
      ratio_lines.append(f'  {kind}: {jax_timing.median / timings["torch"].median:.2f}')

  header = ('batches', 'framework', 'rows x src/tgt', 'real tgt', 'step ms', 'real tgt tok/s',
            'all tgt tok/s', 'model GFLOP/s', 'MFU')
  widths = [max(len(str(r[i])) for r in [header, *rows_table]) for i in range(len(header))]
  line = lambda r: '  '.join(str(c).rjust(w) for c, w in zip(r, widths))
  params_count = sum(x.size for x in jax.tree.leaves(params))
  describe = machine.describe()
  if _TWIN.value:
    describe['versions'] += f', torch {torch.__version__} ({torch.get_num_threads()} threads)'
  print('\n'.join([
      '', f'Training-step speed, {_CONFIG.value.scale} config: post-LN, d_model '
      f'{model_config.emb_dim}, {model_config.num_heads} heads, {model_config.num_layers}+'
      f'{model_config.num_layers} layers, FFN {model_config.mlp_dim}, vocab '
      f'{model_config.vocab_size}, {model_config.dtype}, {params_count / 1e6:.2f} M params',
      *(f'  {k:12s} {v}' for k, v in describe.items()),
      f'  {"peak":12s} {peak / 1e9:,.1f} GFLOP/s ({peak_source})',
      f'  {"timing":12s} median of {_STEPS.value} steps after compile + {_WARMUP.value} '
      f'warm-up, cycling {_NUM_BATCHES.value} batches', '',
      line(header), *(line(r) for r in rows_table), '',
      'Model FLOPs per step (2 per MAC, forward + backward = 3 x forward, embeddings, norms, '
      'softmax, loss and optimizer excluded):', *flops_lines,
      *(['JAX / PyTorch step time (< 1: JAX faster):', *ratio_lines] if ratio_lines else []),
      *([f'Equivalence, eval loss on the first {equivalence[0]} batch: JAX '
         f'{equivalence[1]:.6f}, PyTorch {equivalence[2]:.6f}, relative difference '
         f'{abs(equivalence[1] - equivalence[2]) / abs(equivalence[1]):.1e}']
        if equivalence else []),
      f'IWSLT2017 epoch ({IWSLT2017_EPOCH_TARGET_TOKENS / 1e6:.1f} M target tokens) at the '
      'measured real-token rate (this model, this machine):', *epoch_lines,
      f'  seed          {SEED_SECONDS_PER_EPOCH:8,.0f} s/epoch   {EPOCHS_PER_RUN} epochs: '
      f'{_hours(EPOCHS_PER_RUN * SEED_SECONDS_PER_EPOCH)}',
      REFERENCE, '']))


if __name__ == '__main__':
  app.run(main)
