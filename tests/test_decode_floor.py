"""The decoding floor's program does exactly the weight products a search cannot skip: XLA's
own count of its FLOPs equals flops.decode_flops less the attention scores it leaves out."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import decode_floor
from configs import base
from transformer import flops
from transformer import models


def attention_score_flops(config: models.ModelConfig, *, batch: int, beam: int,
                          source_len: int, steps: int) -> float:
  """QK^T and AV of the encoder, of the decoder over its prefix, and of the cross-attention
  (2 products of h MACs per query-key pair, as flops.forward_flops counts them)."""
  pairs = (batch * source_len * source_len + batch * beam * steps * (steps + 1) / 2 +
           batch * beam * steps * source_len)
  return config.num_layers * 2 * 2.0 * pairs * config.qkv_dim


@pytest.mark.parametrize('beam', [1, 3])
def test_the_floor_computes_every_weight_product_of_a_search_once(beam):
  model = base.get_config('small').model
  model.update(vocab_size=100, emb_dim=32, qkv_dim=32, mlp_dim=64, num_heads=4, num_layers=2)
  config = models.ModelConfig.from_config(model)
  batch, source_len, steps = 2, 6, 4
  w = decode_floor.weights(config)
  x = jnp.ones((batch, source_len, config.emb_dim), jnp.float32)
  run = decode_floor.products(config, beam=beam, steps=steps, unroll=True)
  compiled = jax.jit(run).lower(w, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  expected = (flops.decode_flops(config, batch=batch, beam=beam, source_len=source_len,
                                 steps=steps) -
              attention_score_flops(config, batch=batch, beam=beam, source_len=source_len,
                                    steps=steps))
  # XLA also counts the few elementwise operations (the mean of the keys and values).
  assert cost['flops'] == pytest.approx(expected, rel=0.01)
  out = run(w, x)
  assert out.shape == (batch * beam, config.emb_dim)
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3
