"""The training loop against its own step: how much of the step's speed does train.py keep?

  python -m benchmarks.loop_speed --config=configs/baseline.py:small --steps=200

Runs, in one sitting on the same machine and config: (1) the isolated step (steps.py's
compiled train step on the pipeline's first batches, already on the device, every step ended
by block_until_ready) and (2) train.py's loop (training.train_and_evaluate in a temporary
workdir, evaluation off; data, metrics, diagnostics, checkpoints and the progress bar on as
configured). The loop's rate is the median of its logged `time/tokens_per_second` windows,
the first (compilation) left out. Also times the host's own work per batch (the data
pipeline's next() and placing the batch on the device), which on a CPU competes with XLA's
threads for the same cores.
"""

import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from benchmarks import batches as batches_lib
from benchmarks import machine
from transformer import input_pipeline

from transformer import sharding
from transformer import training
from transformer import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/baseline.py:small',
                                          'Experiment config file.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Steps of the training loop.')
_STEP_REPEATS = flags.DEFINE_integer('step_repeats', 30, 'Timed isolated steps.')


def isolated_step(config, repeats: int) -> float:
  """Real target tokens/s of the compiled step alone, on the pipeline's first batches."""
  batches = batches_lib.packed_batches(config, 10)
  step, state, device_batches = batches_lib.jax_train_step(config, batches)
  for i in range(3):
    state, metrics = step(state, device_batches[i])
  jax.block_until_ready(metrics)
  seconds, tokens = 0.0, 0
  for i in range(repeats):
    start = time.perf_counter()
    state, metrics = step(state, device_batches[i % len(batches)])
    jax.block_until_ready(metrics)
    seconds += time.perf_counter() - start
    tokens += int(np.sum(batches[i % len(batches)]['targets'] > 0))
  return tokens / seconds


def host_work_per_batch(config, count: int = 50) -> dict[str, float]:
  """Seconds per batch of the pipeline's next() and of sharding it onto the mesh."""
  iterator = input_pipeline.make_train_iterator(
      config, input_pipeline.prepare(config, evaluate=False).train)
  mesh = sharding.make_mesh()
  next(iterator)
  start = time.perf_counter()
  host = [next(iterator) for _ in range(count)]
  pipeline = (time.perf_counter() - start) / count
  start = time.perf_counter()
  for batch in host:
    jax.block_until_ready(sharding.shard_batch(batch, mesh))
  return {'pipeline next()': pipeline, 'shard_batch': (time.perf_counter() - start) / count}


def loop(config, steps: int) -> list[float]:
  """The loop's logged tokens/s windows (the first, with compilation, dropped)."""
  config = config.copy_and_resolve_references()
  config.num_train_steps = steps
  config.eval_every_steps = 0
  with tempfile.TemporaryDirectory() as workdir:
    training.train_and_evaluate(config, workdir)
    rates = [row['time/tokens_per_second'] for row in workdir_lib.Workdir(workdir).metrics()
             if 'time/tokens_per_second' in row]
  return rates[1:]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  step_rate = isolated_step(config, _STEP_REPEATS.value)
  host = host_work_per_batch(config)
  rates = loop(config, _STEPS.value)
  loop_rate = statistics.median(rates)
  print('\n'.join([
      '', f'Training loop vs its step, {config.scale} config ({config.batch_size} rows x '
      f'{config.max_length}/{config.max_target_length} tokens)',
      *(f'  {k:12s} {v}' for k, v in machine.describe().items()), '',
      f'  isolated step       {step_rate:10,.0f} real target tok/s ({_STEP_REPEATS.value} steps)',
      f'  train.py loop       {loop_rate:10,.0f} real target tok/s (median of {len(rates)} '
      f'windows of {config.log_every_steps} steps; range {min(rates):,.0f}-{max(rates):,.0f})',
      f'  loop / step         {loop_rate / step_rate:10.1%}',
      *(f'  host: {k:14s} {1e3 * v:8.2f} ms per batch' for k, v in host.items()),
      f'  (diagnostics every {config.diagnostics_every_steps} steps, checkpoints every '
      f'{config.checkpoint_every_steps}, metrics fetched every {config.log_every_steps})', '']))


if __name__ == '__main__':
  app.run(main)
