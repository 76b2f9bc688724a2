"""flops: a search's FLOPs against a count of every product; a run's step FLOPs."""

import pytest

from configs import base
from transformer import flops
from transformer import models
from transformer import study


def counted_decode_flops(c, *, batch, beam, source_len, steps):
  """Every matrix product of encoding once and decoding `steps` tokens, counted one by one."""
  d, h, f, v, s = c.emb_dim, c.qkv_dim, c.mlp_dim, c.vocab_size, source_len
  product = lambda m, k, n: 2 * m * k * n  # [m, k] @ [k, n]
  total = 0
  for _ in range(c.num_layers):  # The encoder, once per sentence.
    total += batch * (4 * product(s, d, h) + 2 * product(s, h, s) + product(s, d, f) +
                      product(s, f, d))
    total += batch * 2 * product(s, d, h)  # Cross-attention keys and values, once.
  for t in range(1, steps + 1):
    for _ in range(c.num_layers):
      total += batch * beam * (4 * product(1, d, h) + 2 * product(1, h, t))  # Self-attention.
      total += batch * beam * (2 * product(1, d, h) + 2 * product(1, h, s))  # Cross: q, out.
      total += batch * beam * (product(1, d, f) + product(1, f, d))
    total += batch * beam * product(1, d, v)
  return total


@pytest.mark.parametrize('beam', [1, 4])
def test_decode_flops_is_every_product_of_the_search(beam):
  model = base.get_config('small').model
  model.update(vocab_size=50, emb_dim=8, num_heads=2, num_layers=2, qkv_dim=8, mlp_dim=16)
  config = models.ModelConfig.from_config(model)
  expected = counted_decode_flops(config, batch=3, beam=beam, source_len=7, steps=5)
  assert flops.decode_flops(config, batch=3, beam=beam, source_len=7,
                            steps=5) == pytest.approx(expected)
def test_step_flops_are_the_formula_over_every_row_and_twice_for_r_drop():
  plan = study.Study('small')
  baseline, r_drop = plan.config('baseline'), plan.config('r_drop')
  expected = flops.train_step_flops(
      models.ModelConfig.from_config(baseline.model), batch=baseline.batch_size,
      source_len=baseline.max_length, target_len=baseline.max_target_length)
  assert flops.config_step_flops(baseline) == expected
  assert flops.config_step_flops(r_drop) == 2 * expected
  baseline.grad_accum_steps = 3  # Every micro-batch of the optimizer step.
  assert flops.config_step_flops(baseline) == 3 * expected
