"""Schedules against their formulas; the optimizer's decay mask and clipping."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer import variants
from configs import base
from transformer import config_utils
from transformer import models
from transformer import optim


def _config(**overrides):
  config = base.get_config('small')
  config.update(overrides)
  return config


def test_rsqrt_matches_vaswani_formula():
  """Vaswani et al. eq. 3 with d_model=512, warmup 4000 (step = update number, from 1)."""
  config = base.get_config('full')
  config.learning_rate = 512 ** -0.5 * 4000 ** -0.5
  schedule = optim.make_schedule(config)
  for step in [1, 10, 1000, 3999, 4000, 4001, 10_000, 99_999]:
    expected = 512 ** -0.5 * min(step ** -0.5, step * 4000 ** -1.5)
    np.testing.assert_allclose(float(schedule(step - 1)), expected, rtol=1e-4)  # float32


@pytest.mark.parametrize('name', ['cosine', 'linear'])
def test_warmup_then_decay_formulas(name):
  config = _config(lr_schedule=name, learning_rate=1e-3, warmup_steps=10, num_train_steps=110)
  schedule = optim.make_schedule(config)
  for step in range(1, 111):
    if step <= 10:
      expected = 1e-3 * step / 10
    else:
      progress = (step - 10) / 100
      expected = 1e-3 * (0.5 * (1 + math.cos(math.pi * progress)) if name == 'cosine'
                         else 1 - progress)
    np.testing.assert_allclose(float(schedule(step - 1)), expected, rtol=1e-4, atol=1e-9)


def test_unknown_schedule_is_an_error():
  with pytest.raises(ValueError, match='lr_schedule'):
    optim.make_schedule(_config(lr_schedule='triangle'))


def test_weight_decay_spares_vectors_and_clipping_bounds_the_update():
  params = {'kernel': jnp.ones((3, 2)), 'scale': jnp.ones((2,))}
  config = _config(weight_decay=0.5, learning_rate=0.1, warmup_steps=0, lr_schedule='linear',
                   num_train_steps=100, grad_clip_norm=1e-3)
  tx = optim.make_optimizer(config)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  first_rate = 0.1 * (1 - 1 / 100)  # Linear decay, no warm-up: the first update's rate.
  np.testing.assert_allclose(updates['kernel'], -first_rate * 0.5 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_allclose(updates['scale'], 0.0)
  # Clipping happens before Adam, so the first Adam step is still ~lr per coordinate in
  # size, but a huge gradient can't produce a non-finite update.
  huge = jax.tree.map(lambda p: 1e30 * jnp.ones_like(p), params)
  updates, _ = tx.update(huge, tx.init(params), params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  assert optax.tree.norm(optax.clip_by_global_norm(1e-3).update(huge, None)[0]) <= 1.0001e-3


@pytest.mark.parametrize('variant', variants.variant_names())
def test_weight_decay_mask_decays_exactly_the_weight_matrices(variant):
  """On the real model's parameters: kernels and the embedding, counted by formula.

  Per layer the matrices are 4·d·h (q, k, v, out) per attention and 2·d·f for the FFN,
  plus the V·d shared embedding. The q/k/v biases are [heads, head_dim], rank 2 like a
  matrix, and must not be decayed; nor any norm parameter or ReZero gate.
  """
  config = variants.get_variant(variant, 'small')
  d, h, f, n, vocab = 8, 8, 12, 2, 11
  config_utils.apply_overrides(config, {'vocab_size': vocab, 'model.emb_dim': d,
                                        'model.qkv_dim': h, 'model.mlp_dim': f,
                                        'model.num_heads': 2, 'model.num_layers': n})
  tokens = jnp.ones((1, 4), jnp.int32)
  params = models.make_model(config).init(jax.random.key(0), tokens, tokens,
                                          train=False)['params']
  mask = optim.weight_decay_mask(params)
  decayed = sum(p.size for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
  assert decayed == vocab * d + n * (4 * d * h + 2 * d * f) + n * (2 * 4 * d * h + 2 * d * f)
  flat_mask = config_utils.flatten(flax.traverse_util.flatten_dict(mask, sep='.'))
  qkv_biases = [k for k in flat_mask if k.endswith(('query.bias', 'key.bias', 'value.bias'))]
  assert len(qkv_biases) == 3 * 3 * n
  assert not any(flat_mask[k] for k in qkv_biases)
  assert not any(v for k, v in flat_mask.items() if 'norm' in k.split('.')[-2] or 'gate' in k)
