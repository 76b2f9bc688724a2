"""Pure loss functions over float32 logits [batch, length, vocab] and int targets (0 = pad).

Each returns sums (loss, weight) rather than means so that a data-parallel step can add
sums across devices before dividing once, and packed rows weigh every token equally.
"""

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
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  entropy = -(confidence * jnp.log(confidence) if confidence > 0 else 0.0)
  if low > 0:
    entropy -= (vocab - 1) * low * jnp.log(low)
  loss = -jnp.sum(soft * log_probs, axis=-1) - entropy
  weights = token_weights(targets)
  return jnp.sum(loss * weights), jnp.sum(weights)


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
