"""scripts/fault_injection.py: a run SIGKILLed at random moments ends as an unbroken one."""

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'scripts',
                      'fault_injection.py')


def test_two_kills_one_during_a_save_leave_no_trace(bible_config, bible_tokenizer, tmp_path):
  """About 90 s on 2 CPU cores: an unbroken run and three restarts of the killed one."""
  del bible_tokenizer  # Trained into data_dir first, so the runs only load it.
  result = subprocess.run(
      [sys.executable, SCRIPT, f'--workdir={tmp_path}', '--kills=2', '--seed=1',
       f'--data_dir={bible_config.data_dir}'],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert 'survived 2/2 kills' in result.stdout
  assert 'kill 1: during a save' in result.stdout or 'kill 1: just after a save' in result.stdout
  assert 'kill 2: at step' in result.stdout
