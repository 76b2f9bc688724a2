"""Normalizations, a registry name -> module.

Every norm has the same call, `norm(x, mask, train)`, so `models.Sublayer` calls them one
way: `x` is [..., features]; `mask` is a boolean [...] that is True on real tokens (None =
all real); `train` says whether batch statistics are used. Only BatchNorm reads `mask` and
`train`. Statistics are computed in float32 and the result is cast back to `x.dtype`.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class LayerNorm(nn.Module):
  """Per-token mean and variance over features (Ba et al. 2016, arXiv:1607.06450)."""
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x, mask=None, train=False):
    del mask, train
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    y = x.astype(jnp.float32)
    mean = jnp.mean(y, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(y - mean), axis=-1, keepdims=True)
    y = (y - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(x.dtype)


class RMSNorm(nn.Module):
  """LayerNorm without re-centring or bias (Zhang & Sennrich 2019, arXiv:1910.07467)."""
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x, mask=None, train=False):
    del mask, train
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
    y = x.astype(jnp.float32)
    y = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(x.dtype)


class ScaleNorm(nn.Module):
  """g * x / ||x|| with one scalar g initialized to sqrt(d) (Nguyen & Salazar 2019, arXiv:1910.05895)."""
  epsilon: float = 1e-5  # The paper clamps the norm from below by this.

  @nn.compact
  def __call__(self, x, mask=None, train=False):
    del mask, train
    g = self.param('scale', nn.initializers.constant(x.shape[-1] ** 0.5), ())
    y = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(y), axis=-1, keepdims=True))
    return (g * y / jnp.maximum(norm, self.epsilon)).astype(x.dtype)


class BatchNorm(nn.Module):
  """Per-feature statistics over all real tokens of the batch (Ioffe & Szegedy 2015, arXiv:1502.03167).

  Masked: padding never enters the statistics, so the padding amount (which varies with
  bucketing and packing) cannot move the output of real tokens (Shen et al. 2020,
  arXiv:2003.07845, discuss why naive BN fails in Transformers). Running averages live in
  the 'batch_stats' collection and replace batch statistics when `train` is False, which
  also makes step-by-step decoding equal to the full pass. With `axis_name` (inside a
  data-parallel `jax.shard_map`) sums and counts are `psum`-ed, so every device normalizes
  with the statistics of the global batch even when devices hold different token counts.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, mask=None, train=False):
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    y = x.astype(jnp.float32)
    if train:
      weight = jnp.ones(x.shape[:-1], jnp.float32) if mask is None else mask.astype(jnp.float32)
      weight = weight[..., None]  # [..., 1]
      axes = tuple(range(x.ndim - 1))
      count = jnp.sum(weight)
      total = jnp.sum(weight * y, axis=axes)
      if self.axis_name is not None:
        count, total = jax.lax.psum((count, total), self.axis_name)
      count = jnp.maximum(count, 1.0)
      mean = total / count
      # Two passes (not E[x^2] - E[x]^2) to avoid cancellation in float32.
      sq = jnp.sum(weight * jnp.square(y - mean), axis=axes)
      if self.axis_name is not None:
        sq = jax.lax.psum(sq, self.axis_name)
      var = sq / count  # Biased, as in flax.linen.BatchNorm.
      if not self.is_initializing():
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
    else:
      mean, var = running_mean.value, running_var.value
    y = (y - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(x.dtype)


class Identity(nn.Module):
  """No normalization: for ReZero (Bachlechner et al. 2020), whose gate replaces the norm."""

  def __call__(self, x, mask=None, train=False):
    del mask, train
    return x


# Each entry builds the norm from the model config, so options such as BatchNorm's
# cross-device axis need no branch at the call site.
NORMS: dict[str, Callable[[Any, str | None], nn.Module]] = {
    'layer_norm': lambda config, name: LayerNorm(name=name),
    'rms_norm': lambda config, name: RMSNorm(name=name),
    'scale_norm': lambda config, name: ScaleNorm(name=name),
    'batch_norm': lambda config, name: BatchNorm(
        axis_name=config.batch_norm_axis_name or None, name=name),
    'none': lambda config, name: Identity(name=name),
}


def make_norm(config, name: str | None = None) -> nn.Module:
  """Returns the norm `config.norm` names (config: a models.ModelConfig)."""
  if config.norm not in NORMS:
    raise ValueError(f'Unknown norm {config.norm!r}; expected one of {sorted(NORMS)}.')
  return NORMS[config.norm](config, name)
