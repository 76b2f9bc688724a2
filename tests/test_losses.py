"""The pure losses against NumPy written from the papers' formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer import losses


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def batch(seed=0, vocab=7):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(2, 5, vocab)).astype(np.float32) * 3
  targets = rng.integers(1, vocab, size=(2, 5)).astype(np.int32)
  targets[0, 3:] = 0  # Padding.
  return logits, targets


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.3])
def test_cross_entropy_is_kl_to_smoothed_target(eps):
  logits, targets = batch()
  vocab = logits.shape[-1]
  q = np.full(logits.shape, eps / (vocab - 1))
  np.put_along_axis(q, targets[..., None], 1 - eps, axis=-1)
  with np.errstate(divide='ignore', invalid='ignore'):
    kl = np.where(q > 0, q * (np.log(q) - np_log_softmax(logits)), 0.0).sum(-1)
  real = targets > 0
  loss, weight = losses.cross_entropy(logits, targets, eps)
  np.testing.assert_allclose(loss, kl[real].sum(), rtol=1e-5)
  assert weight == real.sum() == 8
  if eps == 0:  # Plain negative log-likelihood.
    nll = -np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, nll[real].sum(), rtol=1e-5)


def test_smoothed_loss_is_zero_at_the_smoothed_target():
  vocab, eps = 5, 0.1
  targets = np.array([[1, 3]], np.int32)
  q = np.full((1, 2, vocab), eps / (vocab - 1))
  np.put_along_axis(q, targets[..., None], 1 - eps, axis=-1)
  loss, _ = losses.cross_entropy(np.log(q).astype(np.float32), targets, eps)
  np.testing.assert_allclose(loss, 0.0, atol=1e-5)


def test_r_drop_kl_is_symmetric_kl_and_zero_for_equal_passes():
  logits_a, targets = batch(1)
  logits_b, _ = batch(2)
  log_p, log_q = np_log_softmax(logits_a), np_log_softmax(logits_b)
  p, q = np.exp(log_p), np.exp(log_q)
  expected = 0.5 * ((p * (log_p - log_q)).sum(-1) + (q * (log_q - log_p)).sum(-1))
  kl, weight = losses.r_drop_kl(logits_a, logits_b, targets)
  np.testing.assert_allclose(kl, expected[targets > 0].sum(), rtol=1e-5)
  assert weight == 8
  same, _ = losses.r_drop_kl(logits_a, logits_a, targets)
  assert abs(float(same)) < 1e-6
  swapped, _ = losses.r_drop_kl(logits_b, logits_a, targets)
  np.testing.assert_allclose(swapped, kl, rtol=1e-6)


def test_r_drop_loss_counts_both_passes_in_full():
  """Liang et al. 2021, Eq. 3: NLL_a + NLL_b + alpha * KL, not their mean + alpha * KL."""
  assert losses.r_drop_loss(2.0, 3.0, 0.5, alpha=4.0) == 2.0 + 3.0 + 4.0 * 0.5


@pytest.mark.parametrize('eps', [0.0, 0.1])
def test_cross_entropy_gradient_is_softmax_minus_smoothed_target(eps):
  """The logits gradient the step backpropagates (through the tied output projection):
  softmax(logits) - q on real tokens, 0 on padding, in NumPy."""
  logits, targets = batch(3)
  vocab = logits.shape[-1]
  q = np.full(logits.shape, eps / (vocab - 1))
  np.put_along_axis(q, targets[..., None], 1 - eps, axis=-1)
  expected = (np.exp(np_log_softmax(logits)) - q) * (targets > 0)[..., None]
  grad = jax.jit(jax.grad(lambda l: losses.cross_entropy(l, targets, eps)[0]))(logits)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('eps', [0.0, 0.1])
def test_cross_entropy_value_and_gradient_equal_optax_at_a_real_vocabulary(eps):
  """Against optax.softmax_cross_entropy and autodiff, at vocab 8000 and with logits of
  real models' range, in the jitted step's float32."""
  rng = np.random.default_rng(1)
  vocab = 8000
  logits = jnp.asarray(rng.normal(size=(3, 9, vocab)) * 8, jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, size=(3, 9)), jnp.int32)  # Some padding.
  q = optax.smooth_labels(jax.nn.one_hot(targets, vocab), eps * vocab / (vocab - 1))
  entropy = -jnp.sum(jnp.where(q > 0, q * jnp.log(q), 0.0), axis=-1)

  def reference(logits):
    weights = (targets != 0).astype(jnp.float32)
    return jnp.sum((optax.softmax_cross_entropy(logits, q) - entropy) * weights)

  ours = jax.jit(jax.value_and_grad(lambda l: losses.cross_entropy(l, targets, eps)[0]))
  (value, grad), (expected, expected_grad) = ours(logits), jax.jit(
      jax.value_and_grad(reference))(logits)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
