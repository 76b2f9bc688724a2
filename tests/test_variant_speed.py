"""benchmarks.variant_speed's FLOPs: the plan's formula over every row, twice for R-Drop."""

from benchmarks import variant_speed
from transformer import flops
from transformer import models
from transformer import study


def test_step_flops_are_the_formula_over_every_row_and_twice_for_r_drop():
  plan = study.Study('small')
  baseline, r_drop = plan.config('baseline'), plan.config('r_drop')
  expected = flops.train_step_flops(
      models.ModelConfig.from_config(baseline.model), batch=baseline.batch_size,
      source_len=baseline.max_length, target_len=baseline.max_target_length)
  assert variant_speed.step_flops(baseline) == expected
  assert variant_speed.step_flops(r_drop) == 2 * expected
