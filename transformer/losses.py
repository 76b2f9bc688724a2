"""Pure loss functions over float32 logits [batch, length, vocab] and int targets (0 = pad).

Each returns sums (loss, weight) rather than means so that a data-parallel step can add
sums across devices before dividing once, and packed rows weigh every token equally.
"""

import functools
import math

import jax
import jax.numpy as jnp


def token_weights(targets: jax.Array) -> jax.Array:
  """1.0 on real target tokens, 0.0 on padding (id 0)."""
  return (targets != 0).astype(jnp.float32)


def cross_entropy(logits: jax.Array, targets: jax.Array,
                  label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Masked cross-entropy with label smoothing (Szegedy et al. 2016, arXiv:1512.00567).

  The smoothed target puts 1 - eps on the label and eps / (V - 1) on each other token. As in
  the Flax WMT example, the entropy of that target is subtracted, so the loss is the KL
  divergence from the target: its minimum is 0 for every eps, and for eps = 0 it is the
  plain negative log-likelihood (report that one as perplexity; it is `eps=0`).

  Returns:
    (sum of per-token losses, number of real tokens), both float32 scalars.
  """
  weights = token_weights(targets)
  loss = _token_kl(logits.astype(jnp.float32), targets, label_smoothing)
  return jnp.sum(loss * weights), jnp.sum(weights)


def _smoothing(vocab: int, label_smoothing: float) -> tuple[float, float, float]:
  """(weight on the label, weight on each other token, the smoothed target's entropy)."""
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  entropy = -(confidence * math.log(confidence) if confidence > 0 else 0.0)
  if low > 0:
    entropy -= (vocab - 1) * low * math.log(low)
  return confidence, low, entropy


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _token_kl(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
  """KL(q || softmax(logits)) per token, [..., V] -> [...], q the smoothed target.

  -sum(q * log_softmax) = logsumexp - sum(q * logits), and sum(q * logits) is the label's
  logit and the row's sum, weighted: no one-hot or log-probability array is formed.
  """
  return _token_kl_fwd(logits, targets, label_smoothing)[0]


def _token_kl_fwd(logits, targets, label_smoothing):
  confidence, low, entropy = _smoothing(logits.shape[-1], label_smoothing)
  log_norm = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  target_logit = (confidence - low) * label_logit
  if low > 0:
    target_logit += low * jnp.sum(logits, axis=-1)
  return log_norm - target_logit - entropy, (logits, targets, log_norm)


def _token_kl_bwd(label_smoothing, residuals, g):
  """d KL / d logits = softmax(logits) - q: one pass over [tokens, V], where autodiff of
  log_softmax and the one-hot product would write four such arrays."""
  logits, targets, log_norm = residuals
  confidence, low, _ = _smoothing(logits.shape[-1], label_smoothing)
  label = jnp.arange(logits.shape[-1]) == targets[..., None]
  q = jnp.where(label, confidence, low)
  grad = (jnp.exp(logits - log_norm[..., None]) - q) * g[..., None]
  return grad, None


_token_kl.defvjp(_token_kl_fwd, _token_kl_bwd)


def r_drop_kl(logits_a: jax.Array, logits_b: jax.Array,
              targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """R-Drop's symmetric KL between two dropout passes (Liang et al. 2021, arXiv:2106.14448).

  Per token: (KL(P_a || P_b) + KL(P_b || P_a)) / 2, summed over real tokens. The paper's
  loss is NLL(P_a) + NLL(P_b) + alpha * this (its Eq. 3), gradients flowing through both
  passes.

  Returns:
    (sum of per-token symmetric KL, number of real tokens).
  """
  log_p = jax.nn.log_softmax(logits_a.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(logits_b.astype(jnp.float32), axis=-1)
  kl = 0.5 * jnp.sum((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q), axis=-1)
  weights = token_weights(targets)
  return jnp.sum(kl * weights), jnp.sum(weights)


def r_drop_loss(nll_a: jax.Array, nll_b: jax.Array, kl: jax.Array,
                alpha: float) -> jax.Array:
  """R-Drop's objective, NLL_a + NLL_b + alpha * KL_sym (Liang et al. 2021, Eq. 3).

  Both passes' cross-entropies count in full, as in the paper and its fairseq criterion, so
  alpha keeps the paper's meaning: with their mean instead, alpha = 5 would act as 10.
  """
  return nll_a + nll_b + alpha * kl


def mean_loss(loss_sum: jax.Array, weight_sum: jax.Array) -> jax.Array:
  """Per-token mean from the (sum, weight) pair; 0 for an all-padding batch."""
  return loss_sum / jnp.maximum(weight_sum, 1.0)
