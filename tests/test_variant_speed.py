"""benchmarks.variant_speed: the speed.json the study's report reads, from real steps."""

import json
import subprocess
import sys

import conftest

from transformer import provenance


def test_speed_json_has_each_variants_rate_flops_and_code_version(bible_config, bible_tokenizer,
                                                                   tmp_path):
  del bible_tokenizer  # Prepared once for the session: the benchmark finds it in data_dir.
  run = subprocess.run(
      [sys.executable, '-m', 'benchmarks.variant_speed', '--variants=baseline,r_drop',
       '--steps=2', '--rounds=2', f'--experiment_dir={tmp_path}',
       f'--data_dir={bible_config.data_dir}'],
      capture_output=True, text=True, cwd=conftest.FIXTURES.parents[2], check=True)
  speed = json.loads((tmp_path / 'speed.json').read_text())
  assert sorted(speed) == ['baseline', 'r_drop']
  for variant, entry in speed.items():
    low, high = entry['steps_per_second_range']
    assert 0 < low <= entry['steps_per_second'] <= high
    assert entry['code_version'] == provenance.code_version()
    assert f"| {variant} | {entry['steps_per_second']:.2f} |" in run.stdout
  # R-Drop runs the model twice a step.
  assert speed['r_drop']['gflop_per_step'] == 2 * speed['baseline']['gflop_per_step']
