"""The suite fails fast: a crashed or stuck test ends the run with its name, never a hang.

Each case runs pytest with the project's own pytest.ini (two xdist workers, no worker
restarts, pytest-timeout) on a generated test file, as CI would meet it.
"""

import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).parent.parent


def run_suite(tmp_path, files: dict[str, str], *options: str):
  for name, body in files.items():
    (tmp_path / name).write_text(body)
  start = time.monotonic()
  run = subprocess.run(
      [sys.executable, '-m', 'pytest', '-c', str(ROOT / 'pytest.ini'), '-p', 'no:cacheprovider',
       '--rootdir', str(tmp_path), *options, *map(str, sorted(tmp_path.glob('test_*.py')))],
      capture_output=True, text=True, cwd=tmp_path, timeout=300)
  return run, time.monotonic() - start


def test_a_test_that_aborts_its_process_fails_the_run(tmp_path):
  run, seconds = run_suite(tmp_path, {
      'test_crash.py': 'import os\n\ndef test_aborts():\n  os.abort()\n',
      'test_fine.py': ''.join(f'def test_fine_{i}():\n  assert True\n\n' for i in range(4)),
  })
  output = run.stdout + run.stderr
  assert run.returncode != 0, output
  assert 'test_crash.py::test_aborts' in output and 'crashed' in output, output
  assert seconds < 120


def test_a_stuck_test_is_ended_by_the_timeout(tmp_path):
  run, seconds = run_suite(tmp_path, {
      'test_stuck.py': 'import time\n\ndef test_waits_forever():\n  time.sleep(600)\n',
  }, '-o', 'timeout=5')
  output = run.stdout + run.stderr
  assert run.returncode != 0, output
  # The thread method ends the worker (its stack dump goes to the worker's stderr); xdist
  # names the test it was running and, with no restarts, ends the run.
  assert "crashed while running 'test_stuck.py::test_waits_forever'" in output, output
  assert seconds < 120
