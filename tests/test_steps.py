"""The pure step functions: the R-Drop objective against NumPy, with dropout on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from transformer import models
from transformer import steps


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_nll(logits, targets):
  log_p = np_log_softmax(logits)
  picked = np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  return -np.sum(picked * (targets > 0))


def np_symmetric_kl(logits_a, logits_b, targets):
  log_p, log_q = np_log_softmax(logits_a), np_log_softmax(logits_b)
  kl_pq = np.sum(np.exp(log_p) * (log_p - log_q), -1)
  kl_qp = np.sum(np.exp(log_q) * (log_q - log_p), -1)
  return np.sum(0.5 * (kl_pq + kl_qp) * (targets > 0))


@pytest.mark.parametrize('alpha', [0.7, 5.0])
def test_r_drop_objective_weighs_each_pass_fully(bible_config, alpha):
  """loss_sum = NLL_a + NLL_b + alpha * KL_sym over the two dropout passes (paper's Eq. 3).

  The two passes are recomputed here with the same dropout keys and combined in NumPy; the
  NLL terms and the KL term are each large enough that a 0.5 on the NLLs (alpha acting as
  2 alpha) misses by far more than the tolerance.
  """
  config = conftest.tiny_config(bible_config.data_dir, r_drop_alpha=alpha,
                                **{'model.dropout_rate': 0.3})
  model = models.make_model(config)
  inputs = jnp.array([[5, 6, 7, 8, 1, 0], [9, 10, 11, 1, 0, 0]], jnp.int32)
  targets = jnp.array([[12, 13, 14, 1, 0], [15, 16, 1, 0, 0]], jnp.int32)
  batch = {'inputs': inputs, 'targets': targets}
  params = model.init(jax.random.key(0), inputs, targets, train=False)['params']
  rng = jax.random.key(3)
  loss, _ = steps.loss_sum(params, {}, batch, rng, model=model, config=config)

  first, second = jax.random.split(rng)
  run = lambda key: np.asarray(model.apply({'params': params}, inputs, targets, train=True,
                                           rngs={'dropout': key}), np.float64)
  logits_a, logits_b = run(first), run(second)
  assert not np.allclose(logits_a, logits_b)  # Dropout is on: two different passes.
  nll_a, nll_b = np_nll(logits_a, np.asarray(targets)), np_nll(logits_b, np.asarray(targets))
  kl = np_symmetric_kl(logits_a, logits_b, np.asarray(targets))
  assert kl > 0.01 * (nll_a + nll_b)
  np.testing.assert_allclose(float(loss), nll_a + nll_b + alpha * kl, rtol=1e-5)
