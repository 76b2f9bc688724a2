"""Training: a pure per-device step, data-parallel over a device mesh, and the loop around it.

The step is written as in `pmap` (one device's program, gradients all-reduced over the named
axis `data`) and mapped over a 1-D `Mesh` of all devices with `jax.shard_map` under `jax.jit`,
the form JAX recommends now that `pmap` is in maintenance. Parameters and optimizer state are
replicated by their sharding (`P()`), batches split along `data` (`P('data')`), and the state's
buffers are donated to the step that replaces them.
"""

import dataclasses
import functools
import math
import os
import signal
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
import flax
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import tqdm

from transformer import checkpoints
from transformer import input_pipeline
from transformer import losses
from transformer import metrics as metrics_lib
from transformer import models
from transformer import optim
from transformer import plots
from transformer import translate

AXIS = 'data'
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: checkpointing this (plus the data state) is an exact resume."""
  step: jax.Array  # int32 []: batches consumed, skipped ones included.
  params: Any
  batch_stats: Any  # BatchNorm running statistics; {} for the other norms.
  opt_state: Any
  rng: jax.Array  # uint32 key data; step keys are fold_in(rng, step).
  nonfinite_streak: jax.Array  # int32 []: consecutive steps skipped for NaN/Inf.
  nonfinite_total: jax.Array  # int32 []: all steps skipped for NaN/Inf.


def make_model(config: ml_collections.ConfigDict, *, axis_name: Optional[str] = None):
  """The Transformer of `config.model`; inside shard_map, BatchNorm all-reduces over `axis_name`."""
  model_config = models.ModelConfig.from_config(config.model)
  if axis_name and not model_config.batch_norm_axis_name:
    model_config = dataclasses.replace(model_config, batch_norm_axis_name=axis_name)
  return models.Transformer(model_config)


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process: pure data parallelism."""
  return jax.make_mesh((jax.device_count(),), (AXIS,))


def init_state(config: ml_collections.ConfigDict, model, tx: optax.GradientTransformation,
               batch_shape: tuple[int, int]) -> TrainState:
  """Initial parameters (Xavier-uniform, from config.seed) and optimizer state."""
  rng = jax.random.key(config.seed)
  params_rng, dropout_rng, step_rng = jax.random.split(rng, 3)
  dummy = jnp.ones(batch_shape, jnp.int32)
  variables = model.init({'params': params_rng, 'dropout': dropout_rng}, dummy, dummy,
                         train=False)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
      rng=jax.random.key_data(step_rng), nonfinite_streak=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32))


def _forward(params, batch_stats, batch: Batch, rng, *, model, train: bool,
             intermediates: bool = False):
  """Logits of a (packed) batch, and the updated BatchNorm statistics."""
  variables = {'params': params}
  mutable = []
  if batch_stats:
    variables['batch_stats'] = batch_stats
    if train:
      mutable.append('batch_stats')
  if intermediates:
    mutable.append('intermediates')
  logits, updates = model.apply(
      variables, batch['inputs'], batch['targets'],
      inputs_positions=batch.get('inputs_position'),
      targets_positions=batch.get('targets_position'),
      inputs_segmentation=batch.get('inputs_segmentation'),
      targets_segmentation=batch.get('targets_segmentation'),
      train=train, rngs={'dropout': rng} if train else {}, mutable=mutable)
  return logits, dict(updates)


def loss_sum(params, batch_stats, batch: Batch, rng, *, model, config, intermediates=False):
  """Summed training loss of one device's batch: cross-entropy (+ R-Drop), and auxiliaries.

  With R-Drop (Liang et al. 2021) the batch goes through the model twice with independent
  dropout masks; the loss is the mean of both cross-entropies plus alpha times their
  symmetric KL divergence.
  """
  targets = batch['targets']
  first_rng, second_rng = jax.random.split(rng)
  logits, updates = _forward(params, batch_stats, batch, first_rng, model=model, train=True,
                             intermediates=intermediates)
  loss, _ = losses.cross_entropy(logits, targets, config.label_smoothing)
  if config.r_drop_alpha > 0:
    logits_b, updates = _forward(params, updates.get('batch_stats', batch_stats), batch,
                                 second_rng, model=model, train=True)
    loss_b, _ = losses.cross_entropy(logits_b, targets, config.label_smoothing)
    kl, _ = losses.r_drop_kl(logits, logits_b, targets)
    loss = 0.5 * (loss + loss_b) + config.r_drop_alpha * kl
  return loss, updates


def _tree_all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _per_device(params):
  """The replicated params as this device's own copy, so autodiff gives per-device grads."""
  return jax.tree.map(lambda p: lax.pcast(p, AXIS, to='varying'), params)


def train_step(state: TrainState, batch: Batch, *, model, tx, config) -> tuple[TrainState, dict]:
  """One optimizer step on one device's share of the batch; run under shard_map.

  As in pmap, each device differentiates its own loss with respect to its own copy of the
  parameters (`pcast` to 'varying' makes the replicated params per-device for autodiff, so
  shard_map adds no implicit reduction) and the gradients are then all-reduced explicitly.
  The per-device loss is divided by the *global* number of target tokens, so the psum of
  the per-device gradients (n times their pmean) is exactly the gradient of the global
  token mean, however unevenly real tokens are spread over devices. A step whose loss or
  gradients are not finite leaves params and optimizer state untouched and is counted.
  """
  step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  device_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
  num_tokens = lax.psum(jnp.sum(batch['targets'] > 0), AXIS)

  def loss_fn(params):
    loss, updates = loss_sum(params, state.batch_stats, batch, device_rng, model=model,
                             config=config)
    return loss / num_tokens, updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      _per_device(state.params))
  loss, grads = lax.psum((loss, grads), AXIS)
  finite = jnp.isfinite(loss) & _tree_all_finite(grads)
  param_updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, param_updates)
  keep_if_finite = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep_if_finite(new_params, state.params),
      opt_state=keep_if_finite(new_opt_state, state.opt_state),
      batch_stats=keep_if_finite(updates.get('batch_stats', state.batch_stats),
                                 state.batch_stats),
      nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
      nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
  step_metrics = {
      'train/loss': loss, 'train/tokens': num_tokens.astype(jnp.float32),
      'train/grad_norm': optax.tree.norm(grads),
      'train/param_norm': optax.tree.norm(state.params),
      'train/nonfinite_streak': new_state.nonfinite_streak.astype(jnp.float32),
  }
  return new_state, step_metrics


def eval_step(state: TrainState, batch: Batch, *, model) -> dict:
  """Summed (unsmoothed) cross-entropy and token count of a validation batch."""
  logits, _ = _forward(state.params, state.batch_stats, batch, None, model=model, train=False)
  loss, count = losses.cross_entropy(logits, batch['targets'], 0.0)
  return {'loss': lax.psum(loss, AXIS), 'tokens': lax.psum(count, AXIS)}


def _layer_of(path) -> str:
  """'encoder/encoder_layer_0' for any parameter below that layer (two levels deep)."""
  names = [getattr(k, 'key', str(k)) for k in path]
  return '/'.join(names[:2])


def per_layer_norms(tree) -> dict[str, jax.Array]:
  """L2 norm of a parameter-shaped tree, grouped by layer."""
  squares = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    layer = _layer_of(path)
    squares[layer] = squares.get(layer, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return {layer: jnp.sqrt(total) for layer, total in squares.items()}


def diagnostics_step(state: TrainState, batch: Batch, *, model, config) -> dict:
  """Per-layer gradient norms and activation RMS, for the normalization study.

  Computed on the step's batch without updating anything, so it can run every N steps
  and leave the training trajectory exactly as it would be without it.
  """
  step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  device_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
  num_tokens = lax.psum(jnp.sum(batch['targets'] > 0), AXIS)

  def loss_fn(params):
    loss, updates = loss_sum(params, state.batch_stats, batch, device_rng, model=model,
                             config=config, intermediates=True)
    return loss / num_tokens, updates

  (_, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      _per_device(state.params))
  grads = lax.psum(grads, AXIS)
  out = {f'grad_norm/{k}': v for k, v in per_layer_norms(grads).items()}
  for path, value in jax.tree_util.tree_leaves_with_path(updates.get('intermediates', {})):
    name = '/'.join(getattr(k, 'key', str(k)) for k in path[:-1])
    out[f'activation_rms/{name}'] = lax.pmean(jnp.mean(value), AXIS)
  return out


@dataclasses.dataclass
class CompiledSteps:
  """The jitted, shard_mapped step functions of one run."""
  train: Callable
  eval: Callable
  diagnostics: Callable


def compile_steps(config, model, tx, mesh: Mesh) -> CompiledSteps:
  """Maps the per-device steps over `mesh`; the train step donates the old state."""
  def data_parallel(fn, out_specs, donate=()):
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=out_specs)
    return jax.jit(mapped, donate_argnums=donate)
  return CompiledSteps(
      train=data_parallel(functools.partial(train_step, model=model, tx=tx, config=config),
                          out_specs=(P(), P()), donate=(0,)),
      eval=data_parallel(functools.partial(eval_step, model=model), out_specs=P()),
      diagnostics=data_parallel(
          functools.partial(diagnostics_step, model=model, config=config), out_specs=P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> Batch:
  """This process's rows -> one global array per key, split along the data axis."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def evaluate_loss(steps: CompiledSteps, state: TrainState, batches: Iterator, mesh) -> dict:
  totals = None
  for batch in batches:
    out = steps.eval(state, shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  loss = float(totals['loss'] / max(totals['tokens'], 1))
  return {'eval/loss': loss, 'eval/perplexity': math.exp(min(loss, 50.0))}


class _PreemptionFlag:
  """Set by SIGTERM; the loop checks it between steps, saves and exits cleanly."""

  def __init__(self):
    self.raised = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and exiting.')
    self.raised = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


class _QuietLibraries(logging.logging.Filter):
  """Drops orbax's INFO lines (a dozen per checkpoint save) so the run's own log is readable."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def quiet_library_logs() -> None:
  """Keeps warnings and errors of every library, and the INFO lines of everything but orbax."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps with NaN/Inf loss or gradients."""


def _check_workdir(workdir: str) -> None:
  """Fails before any work if the workdir cannot hold checkpoints."""
  try:
    os.makedirs(workdir, exist_ok=True)
    # A name of its own: the processes of a multi-process run probe the same folder.
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test') as f:
      f.write(b'\0' * 1024)
      f.flush()
  except OSError as e:
    raise OSError(f'Cannot write to workdir {workdir!r}: {e}') from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns last metrics."""
  make_model(config)  # A bad model field fails here, before config.json claims the workdir.
  _check_workdir(workdir)
  checkpoints.check_or_save_config(workdir, config)
  mesh = make_mesh()
  num_devices = mesh.devices.size
  if config.batch_size % num_devices:
    raise ValueError(f'batch_size {config.batch_size} is not divisible by the '
                     f'{num_devices} devices.')
  logging.info('Training on %d devices (%d processes): %s', num_devices, jax.process_count(),
               jax.devices())

  tokenizer = input_pipeline.prepare(config)
  train_iter = input_pipeline.make_train_iterator(
      config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count())

  model = make_model(config, axis_name=AXIS)
  tx = optim.make_optimizer(config)
  schedule = optim.make_schedule(config)
  replicated = NamedSharding(mesh, P())
  batch_shape = (1, config.max_length)
  init = jax.jit(functools.partial(init_state, config, make_model(config), tx, batch_shape),
                 out_shardings=replicated)
  checkpointer = checkpoints.Checkpointer(workdir, max_to_keep=config.max_checkpoints_to_keep)
  state = checkpointer.restore(jax.eval_shape(init), train_iter) if (
      checkpointer.latest_step() is not None) else None
  if state is None:
    state = init()
  start_step = int(state.step)
  steps = compile_steps(config, model, tx, mesh)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step,
                                    enabled=jax.process_index() == 0)
  if start_step == 0:
    writer.write(0, {'params/count': sum(x.size for x in jax.tree.leaves(state.params))})
  wall_seconds_before = max((row['time/wall_seconds'] for row in metrics_lib.read_metrics(workdir)
                             if 'time/wall_seconds' in row), default=0.0)
  loop_start = time.perf_counter()

  validation = translate.Validation(config, tokenizer, mesh) if config.eval_every_steps else None
  preemption = _PreemptionFlag()
  pending, last_metrics, step = [], {}, start_step
  window_start, window_steps = time.perf_counter(), 0

  def flush_train_metrics():
    """Fetches the steps' metrics (the loop's only host sync) and writes one row a step."""
    nonlocal pending
    fetched = jax.device_get(pending)
    for first_step, step_metrics in zip(range(step - len(fetched) + 1, step + 1), fetched):
      row = {k: v for k, v in step_metrics.items() if k != 'train/nonfinite_streak'}
      row['train/learning_rate'] = schedule(first_step - 1)
      writer.write(first_step, row, log=False)
      last_metrics.update(row)
    pending = []
    return fetched

  progress = tqdm.tqdm(total=config.num_train_steps, initial=start_step, unit='step',
                       dynamic_ncols=True, disable=jax.process_index() != 0)
  try:
    while step < config.num_train_steps and not preemption.raised:
      batch = shard_batch(next(train_iter), mesh)
      if config.diagnostics_every_steps and step % config.diagnostics_every_steps == 0:
        # Labelled with the step whose batch and gradient it measures (1 = at init).
        writer.write(step + 1, jax.device_get(steps.diagnostics(state, batch)), log=False)
      state, step_metrics = steps.train(state, batch)
      pending.append(step_metrics)
      step += 1
      window_steps += 1
      progress.update()

      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        fetched = flush_train_metrics()
        elapsed = time.perf_counter() - window_start
        tokens = sum(float(m['train/tokens']) for m in fetched)
        speed = {'time/tokens_per_second': tokens / elapsed,
                 'time/steps_per_second': window_steps / elapsed,
                 'time/wall_seconds': wall_seconds_before + time.perf_counter() - loop_start}
        writer.write(step, speed, log=False)
        loss = float(np.mean([m['train/loss'] for m in fetched]))
        logging.info('step %d: loss %.4f, %.0f target tokens/s', step, loss,
                     speed['time/tokens_per_second'])
        progress.set_postfix(loss=f'{loss:.3f}', tok_s=f"{speed['time/tokens_per_second']:.0f}")
        streak = max(int(m['train/nonfinite_streak']) for m in fetched)
        if streak:
          logging.warning('Skipped %d NaN/Inf steps so far (%d in a row).',
                          int(state.nonfinite_total), streak)
        if streak >= config.max_nonfinite_steps:
          checkpointer.wait_until_finished()
          raise NonFiniteLossError(
              f'{streak} consecutive steps had a NaN/Inf loss or gradient (limit '
              f'max_nonfinite_steps={config.max_nonfinite_steps}); stopping. The last good '
              f'checkpoint (step {checkpointer.latest_step()}) is intact in {workdir}.')
        window_start, window_steps = time.perf_counter(), 0

      if validation and (step % config.eval_every_steps == 0 or step == config.num_train_steps):
        eval_metrics = evaluate_loss(steps, state, input_pipeline.make_eval_iterator(
            config, tokenizer, 'validation', process_index=jax.process_index(),
            process_count=jax.process_count()), mesh)
        eval_metrics.update(validation.bleu(state))
        eval_metrics['eval/nonfinite_total'] = float(state.nonfinite_total)
        writer.write(step, eval_metrics)
        last_metrics.update(eval_metrics)
        checkpointer.save_best(step, state, eval_metrics['eval/bleu'])
        window_start, window_steps = time.perf_counter(), 0

      if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
        flush_train_metrics()  # A resumed run must find every row up to its checkpoint.
        checkpointer.save(step, state, train_iter)
    if preemption.raised:
      flush_train_metrics()
      if step % config.checkpoint_every_steps:
        checkpointer.save(step, state, train_iter)
    if jax.process_index() == 0:
      plots.plot_training_run(workdir, metrics_lib.read_metrics(workdir))
  finally:
    progress.close()
    preemption.restore()
    checkpointer.wait_until_finished()
    checkpointer.close()
    writer.close()
  return last_metrics
