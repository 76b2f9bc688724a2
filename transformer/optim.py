"""Learning-rate schedules and the optimizer, built from optax pieces.

The rsqrt schedule is Vaswani et al. (2017), eq. 3, written with its peak as the knob:
  lr(step) = peak * min(step / warmup, sqrt(warmup / step)),
which equals d_model**-0.5 * min(step**-0.5, step * warmup**-1.5) when
peak = d_model**-0.5 * warmup**-0.5. The alternatives warm up linearly, then decay to zero
at `num_train_steps` (cosine or linearly): a short run must end at a small rate.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('rsqrt', 'cosine', 'linear')
# Parameter names (the last key of a path) that AdamW decays: weight matrices and the
# shared embedding. Everything else is a bias, a norm's scale/offset, ScaleNorm's g or the
# ReZero gate.
DECAYED_PARAMETERS = frozenset({'kernel', 'embedding'})


def _rsqrt_decay(peak: float, warmup_steps: int) -> optax.Schedule:
  """peak * sqrt(warmup / step) at 1-based step `warmup + count`."""
  warmup = max(warmup_steps, 1)
  return lambda count: peak * jnp.sqrt(warmup / jnp.maximum(count + warmup, warmup))


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate of each update, as a function of optax's 0-based update count.

  The formulas are written on the 1-based step s = count + 1 (the first update uses
  peak / warmup, not zero), as in the papers.
  """
  peak, warmup, total = config.learning_rate, config.warmup_steps, config.num_train_steps
  if config.lr_schedule not in SCHEDULES:
    raise ValueError(f'Unknown lr_schedule {config.lr_schedule!r}; expected one of {SCHEDULES}.')
  if config.lr_schedule == 'rsqrt':
    decay = _rsqrt_decay(peak, warmup)
  elif config.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps=max(total - warmup, 1))
  else:
    decay = optax.linear_schedule(peak, 0.0, transition_steps=max(total - warmup, 1))
  if warmup:
    decay = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, transition_steps=warmup), decay], boundaries=[warmup])
  return lambda count: decay(count + 1)


def weight_decay_mask(params):
  """True where AdamW (Loshchilov & Hutter 2019) decays: by a parameter's role, not its rank.

  Dense kernels and the shared embedding (also the output projection, decayed as in
  GPT-2/nanoGPT) are decayed. Biases (the q/k/v biases of DenseGeneral are [heads, head_dim]
  matrices, yet biases), norm scales/offsets, ScaleNorm's g and the ReZero gate are not: they
  set the scale of activations, and pulling them toward 0 changes what the network computes
  rather than its complexity.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) in DECAYED_PARAMETERS, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (or AdamW when weight_decay > 0), with optional global-norm clipping.

  With grad_accum_steps = k > 1 it is wrapped in optax.MultiSteps, which sums the gradients
  of k micro-batches (use_grad_mean=False: each micro-batch's loss is already divided by the
  whole step's token count, see steps.train_step) and updates on the k-th; clipping and the
  schedule see one optimizer step. The running sum lives in the optimizer state, so it is
  checkpointed with it.
  """
  schedule = make_schedule(config)
  if config.weight_decay > 0:
    opt = optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                      weight_decay=config.weight_decay, mask=weight_decay_mask)
  else:
    opt = optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  if config.grad_accum_steps > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=config.grad_accum_steps, use_grad_mean=False)
  return opt
