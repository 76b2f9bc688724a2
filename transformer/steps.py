"""The pure, jitted training step: state, initialization, loss, the step functions, compilation.

The step is written as in `pmap` (one device's program, gradients all-reduced over the named
axis `sharding.AXIS`) and mapped over a 1-D `Mesh` of all devices with `jax.shard_map` under
`jax.jit`, the form JAX recommends now that `pmap` is in maintenance. Parameters and
optimizer state are replicated by their sharding, batches split along the data axis, and the
state's buffers are donated to the step that replaces them. Nothing here touches files or the
host: the loop around it is `training.py`.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import optax

from transformer import losses
from transformer import models
from transformer import optim
from transformer import sharding

AXIS = sharding.AXIS
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: checkpointing this (plus the data state) is an exact resume."""
  step: jax.Array  # int32 []: (micro-)batches consumed, skipped ones included.
  params: Any
  batch_stats: Any  # BatchNorm running statistics; {} for the other norms.
  opt_state: Any
  rng: jax.Array  # uint32 key data; step keys are fold_in(rng, step).
  nonfinite_streak: jax.Array  # int32 []: consecutive (micro-)batches skipped for NaN/Inf.
  nonfinite_total: jax.Array  # int32 []: all (micro-)batches skipped for NaN/Inf.


def init_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> TrainState:
  """Initial parameters (Xavier-uniform, from config.seed) and optimizer state."""
  model = models.make_model(config)
  rng = jax.random.key(config.seed)
  params_rng, dropout_rng, step_rng = jax.random.split(rng, 3)
  dummy = jnp.ones((1, config.max_length), jnp.int32)
  variables = model.init({'params': params_rng, 'dropout': dropout_rng}, dummy, dummy,
                         train=False)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
      rng=jax.random.key_data(step_rng), nonfinite_streak=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32))


def abstract_state(config: ml_collections.ConfigDict) -> TrainState:
  """The TrainState's shapes and dtypes, without computing it: what a restore fills in."""
  return jax.eval_shape(functools.partial(init_state, config, optim.make_optimizer(config)))


def model_variables(state: TrainState) -> dict:
  """The variables a model needs for inference."""
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def forward(params, batch_stats, batch: Batch, rng, *, model, train: bool,
            intermediates: bool = False):
  """Logits of a (packed) batch, and the updated mutable collections."""
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

  With R-Drop (Liang et al. 2021, arXiv:2106.14448, Eq. 3) the batch goes through the model
  twice with independent dropout masks and the loss is NLL_a + NLL_b + alpha * KL_sym, the
  weighting of the paper and its fairseq criterion: alpha is the paper's alpha.
  """
  targets = batch['targets']
  first_rng, second_rng = jax.random.split(rng)
  logits, updates = forward(params, batch_stats, batch, first_rng, model=model, train=True,
                            intermediates=intermediates)
  loss, _ = losses.cross_entropy(logits, targets, config.label_smoothing)
  if config.r_drop_alpha > 0:
    logits_b, updates_b = forward(params, updates.get('batch_stats', batch_stats), batch,
                                  second_rng, model=model, train=True)
    loss_b, _ = losses.cross_entropy(logits_b, targets, config.label_smoothing)
    kl, _ = losses.r_drop_kl(logits, logits_b, targets)
    loss = losses.r_drop_loss(loss, loss_b, kl, config.r_drop_alpha)
    updates = {**updates, **updates_b}
  return loss, updates


def _tree_all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _per_device(params):
  """The replicated params as this device's own copy, so autodiff gives per-device grads."""
  return jax.tree.map(lambda p: lax.pcast(p, AXIS, to='varying'), params)


def _device_rng(state: TrainState) -> jax.Array:
  step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  return jax.random.fold_in(step_rng, lax.axis_index(AXIS))


def train_step(state: TrainState, batch: Batch, *, model, tx, config) -> tuple[TrainState, dict]:
  """One optimizer step on one device's share of the batch; run under shard_map.

  As in pmap, each device differentiates its own loss with respect to its own copy of the
  parameters (`pcast` to 'varying' makes the replicated params per-device for autodiff, so
  shard_map adds no implicit reduction) and the gradients are then all-reduced explicitly.
  The per-device loss is divided by the *global* number of target tokens, so the psum of
  the per-device gradients (n times their pmean) is exactly the gradient of the global
  token mean, however unevenly real tokens are spread over devices. A step whose loss or
  gradients are not finite leaves params and optimizer state untouched and is counted.

  With gradient accumulation (config.grad_accum_steps = k > 1, optax.MultiSteps) this is one
  micro-batch of an optimizer step. The batch then carries `step_tokens` (per row: the real
  target tokens of that row in all k micro-batches, input_pipeline.accumulation_group), and
  the loss is divided by the whole step's global token count, so the sum of the k gradients
  MultiSteps forms is exactly the full batch's gradient. A non-finite micro-batch adds a zero
  gradient (and is counted) instead of stopping MultiSteps' count, which must stay in step
  with the loop's groups of k. BatchNorm normalizes each micro-batch with its own statistics
  (all devices together) and updates its running averages once per micro-batch: the one
  thing accumulation does not make equal to the full batch.
  """
  if 'step_tokens' in batch:
    num_tokens = lax.psum(jnp.sum(batch['step_tokens']), AXIS)
  else:
    num_tokens = lax.psum(jnp.sum(batch['targets'] > 0), AXIS)

  def loss_fn(params):
    loss, updates = loss_sum(params, state.batch_stats, batch, _device_rng(state), model=model,
                             config=config)
    return loss / num_tokens, updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      _per_device(state.params))
  loss, grads = lax.psum((loss, grads), AXIS)
  finite = jnp.isfinite(loss) & _tree_all_finite(grads)
  keep_if_finite = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  if isinstance(tx, optax.MultiSteps):
    grads = keep_if_finite(grads, jax.tree.map(jnp.zeros_like, grads))
    # The gradient summed so far; at the k-th micro-batch, the optimizer step's.
    step_grads = jax.tree.map(jnp.add, state.opt_state.acc_grads, grads)
    param_updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, param_updates)
  else:
    step_grads = grads
    param_updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = keep_if_finite(optax.apply_updates(state.params, param_updates), state.params)
    new_opt_state = keep_if_finite(new_opt_state, state.opt_state)
  new_state = state.replace(
      step=state.step + 1,
      params=new_params,
      opt_state=new_opt_state,
      batch_stats=keep_if_finite(updates.get('batch_stats', state.batch_stats),
                                 state.batch_stats),
      nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
      nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
  step_metrics = {
      'train/loss': loss, 'train/tokens': num_tokens.astype(jnp.float32),
      'train/grad_norm': optax.tree.norm(step_grads),
      'train/param_norm': optax.tree.norm(state.params),
      'train/nonfinite_streak': new_state.nonfinite_streak.astype(jnp.float32),
  }
  return new_state, step_metrics


def eval_step(state: TrainState, batch: Batch, *, model) -> dict:
  """Summed (unsmoothed) cross-entropy and token count of a validation batch."""
  logits, _ = forward(state.params, state.batch_stats, batch, None, model=model, train=False)
  loss, count = losses.cross_entropy(logits, batch['targets'], 0.0)
  return {'loss': lax.psum(loss, AXIS), 'tokens': lax.psum(count, AXIS)}


def _layer_of(path) -> str:
  """The first two keys of a parameter path: the layer it belongs to.

  E.g. 'encoder_layer_0/self_attention' for every parameter of that attention block, and
  'shared_embedding/embedding' or 'encoder_norm/norm' for the parameters outside the layers.
  """
  names = [getattr(k, 'key', str(k)) for k in path]
  return '/'.join(names[:2])


def per_layer_norms(tree) -> dict[str, jax.Array]:
  """L2 norm of a parameter-shaped tree, grouped by `_layer_of`."""
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
  num_tokens = lax.psum(jnp.sum(batch['targets'] > 0), AXIS)

  def loss_fn(params):
    loss, updates = loss_sum(params, state.batch_stats, batch, _device_rng(state), model=model,
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
  """The jitted, shard_mapped step functions of one run, and its state initializer."""
  init: Callable[[], TrainState]
  train: Callable
  eval: Callable
  diagnostics: Callable


def compile_steps(config: ml_collections.ConfigDict, mesh: Mesh) -> CompiledSteps:
  """Maps the per-device steps over `mesh`; the train step donates the old state."""
  # Inside shard_map BatchNorm all-reduces its batch statistics over the data axis.
  model = models.make_model(config, axis_name=AXIS)
  tx = optim.make_optimizer(config)

  def data_parallel(fn, out_specs, donate=()):
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=out_specs)
    return jax.jit(mapped, donate_argnums=donate)

  return CompiledSteps(
      init=jax.jit(functools.partial(init_state, config, tx),
                   out_shardings=sharding.replicated(mesh)),
      train=data_parallel(functools.partial(train_step, model=model, tx=tx, config=config),
                          out_specs=(P(), P()), donate=(0,)),
      eval=data_parallel(functools.partial(eval_step, model=model), out_specs=P()),
      diagnostics=data_parallel(
          functools.partial(diagnostics_step, model=model, config=config), out_specs=P()))
