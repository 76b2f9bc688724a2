"""The PyTorch twin (benchmarks/torch_twin.py) computes the Flax model's function.

Skipped where torch is absent (CI installs no torch; it is the `bench` extra).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from benchmarks import torch_twin  # pylint: disable=g-import-not-at-top
from configs import base  # pylint: disable=g-import-not-at-top
from transformer import losses  # pylint: disable=g-import-not-at-top
from transformer import models  # pylint: disable=g-import-not-at-top
from transformer import optim  # pylint: disable=g-import-not-at-top


def _tiny_config():
  config = base.get_config('small')
  config.vocab_size = 11
  config.model.update(emb_dim=8, qkv_dim=8, num_heads=2, num_layers=2, mlp_dim=12, max_len=16)
  return config


def _packed_batch():
  """Two rows [rows=2, source 5, target 7]: one packs two sentences, one is padded."""
  return {
      'inputs': np.array([[3, 4, 1, 5, 1], [6, 7, 8, 1, 0]]),
      'inputs_segmentation': np.array([[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]]),
      'inputs_position': np.array([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]),
      'targets': np.array([[9, 2, 1, 10, 3, 1, 0], [4, 5, 6, 7, 8, 1, 0]]),
      'targets_segmentation': np.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0]]),
      'targets_position': np.array([[0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 0]]),
  }


def _flax_loss(model, params, batch):
  """Mean eval cross-entropy of the Flax model."""
  logits = model.apply({'params': params}, batch['inputs'], batch['targets'],
                       inputs_positions=batch.get('inputs_position'),
                       targets_positions=batch.get('targets_position'),
                       inputs_segmentation=batch.get('inputs_segmentation'),
                       targets_segmentation=batch.get('targets_segmentation'), train=False)
  loss, count = losses.cross_entropy(logits, batch['targets'])
  return loss / count


@pytest.fixture(scope='module')
def twins():
  config = _tiny_config()
  model = models.Transformer(models.ModelConfig.from_config(config.model))
  dummy = jnp.ones((1, 5), jnp.int32)
  params = model.init(jax.random.key(1), dummy, dummy, train=False)['params']
  # Non-zero biases and norm offsets, so a dropped or misplaced one changes the loss.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  torch_model = torch_twin.Transformer(model.config)
  torch_twin.load_flax_params(torch_model, params)
  return config, model, params, torch_model


@pytest.mark.parametrize('packed', [True, False])
def test_eval_loss_and_gradients_match_flax(twins, packed):
  _, model, params, torch_model = twins
  batch = _packed_batch()
  if not packed:
    batch = {'inputs': np.array([[3, 4, 5, 6, 1]] * 2), 'targets': np.array([[7, 8, 9, 1]] * 2)}
  jax_batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  jax_loss, jax_grads = jax.value_and_grad(_flax_loss, argnums=1)(model, params, jax_batch)

  torch_model.zero_grad()
  torch_model.eval()
  torch_batch = torch_twin.to_torch(batch)
  loss, count = torch_twin.cross_entropy(torch_twin._forward(torch_model, torch_batch),
                                         torch_batch['targets'])
  (loss / count).backward()
  loss = loss.detach()

  np.testing.assert_allclose((loss / count).item(), float(jax_loss), rtol=1e-5)
  expected = torch_twin._flax_to_torch_state(jax_grads, model.config.num_layers)
  for name, param in torch_model.named_parameters():
    np.testing.assert_allclose(param.grad.numpy(), expected[name], rtol=1e-4, atol=1e-6,
                               err_msg=name)


def test_every_torch_parameter_has_a_flax_source(twins):
  _, model, params, torch_model = twins
  state = torch_twin._flax_to_torch_state(params, model.config.num_layers)
  assert set(state) == {name for name, _ in torch_model.named_parameters()}
  assert sum(v.size for v in state.values()) == sum(x.size for x in jax.tree.leaves(params))


def test_cross_entropy_matches_flax_with_label_smoothing():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 11)).astype(np.float32)
  targets = np.array([[3, 1, 0], [2, 0, 0]])
  expected = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 0.1)
  got = torch_twin.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), 0.1)
  np.testing.assert_allclose([float(x) for x in got], [float(x) for x in expected], rtol=1e-5)


def test_twin_refuses_other_variants():
  config = _tiny_config()
  config.model.norm_position = 'pre'
  with pytest.raises(ValueError, match='post-LN baseline'):
    torch_twin.check_twinnable(config)


def test_one_adam_step_matches_optax(twins):
  config, model, params, _ = twins
  config = config.copy_and_resolve_references()
  config.model.dropout_rate = 0.0  # So the torch train-mode step is deterministic.
  config.update(warmup_steps=0, learning_rate=1e-2, adam_eps=1e-3)  # eps large enough to see.
  torch_model = torch_twin.Transformer(models.ModelConfig.from_config(config.model))
  torch_twin.load_flax_params(torch_model, params)
  batch = _packed_batch()
  grads = jax.grad(_flax_loss, argnums=1)(
      model, params, {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()})
  tx = optim.make_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)

  torch_twin.Trainer(torch_model, config).step(torch_twin.to_torch(batch))

  before = torch_twin._flax_to_torch_state(params, model.config.num_layers)
  expected = torch_twin._flax_to_torch_state(updates, model.config.num_layers)
  for name, param in torch_model.named_parameters():
    np.testing.assert_allclose(param.detach().numpy() - before[name], expected[name],
                               rtol=1e-3, atol=1e-6, err_msg=name)
