"""benchmarks.gpu_check --dry_run: the GPU check's code path, at a tiny size on the CPU."""

import json
import math
import subprocess
import sys

import conftest  # pylint: disable=unused-import  # Two CPU devices, as everywhere.

from benchmarks import gpu_check


def test_dry_run_figures_are_consistent(tmp_path):
  out = tmp_path / 'check.json'
  run = subprocess.run([sys.executable, '-m', 'benchmarks.gpu_check', '--dry_run',
                        f'--output={out}'], capture_output=True, text=True,
                       cwd=conftest.FIXTURES.parents[2], check=True)
  assert 'GPU check (DRY RUN' in run.stdout and 'beam-4 decoding: 16 sentences' in run.stdout
  result = json.loads(out.read_text())
  for variant in ('baseline', 'r_drop'):
    t = result[variant]
    assert t['loss_finite']
    assert math.isclose(t['tokens_per_second'], t['tokens_per_step'] / t['step_seconds'])
    assert math.isclose(t['mfu_vs_measured_matmul'], t['model_flops_per_second'] /
                        result['peak_flops']['measured_matmul'])
  # R-Drop runs the model twice: twice the model FLOPs of the same batch.
  assert result['r_drop']['model_flops_per_step'] == 2 * result['baseline'][
      'model_flops_per_step']
  implied = result['implied']
  epoch = gpu_check.IWSLT_EPOCH_TARGET_TOKENS / result['baseline']['tokens_per_second']
  assert math.isclose(implied['epoch_seconds'], epoch)
  r_drop_epoch = gpu_check.IWSLT_EPOCH_TARGET_TOKENS / result['r_drop']['tokens_per_second']
  assert math.isclose(implied['study_hours'], 50 * (9 * epoch + r_drop_epoch) / 3600)
  assert result['decode']['sentences'] == 16 and result['decode']['output_tokens'] >= 16
