"""Are two study runs at once faster than one at a time on this machine?

  python -m benchmarks.concurrent_runs --steps=150

Trains the study's baseline (its small regime, evaluation included as the study runs it) for
`--steps` steps three times in one sitting: once alone, then twice at once, each a
`train.py` process in its own temporary workdir. Wall time counts everything a study run
pays (start-up, compilation, data, evaluation). Prints steps per second of the machine
for each way; study.py --parallel_runs should be the faster one.
"""

import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import machine
from transformer import study_plan

_STEPS = flags.DEFINE_integer('steps', 150, 'Training steps of each run.')
_VARIANT = flags.DEFINE_string('variant', 'baseline', 'Variant in configs/.')


def _command(workdir: str) -> list[str]:
  overrides = {**study_plan.REGIMES['small'], 'num_train_steps': _STEPS.value,
               'eval_every_steps': max(1, _STEPS.value // 3)}
  return [sys.executable, 'train.py', f'--config=configs/{_VARIANT.value}.py:small',
          f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in overrides.items())]


def _run_at_once(count: int) -> float:
  """Seconds for `count` runs started together to all finish."""
  with tempfile.TemporaryDirectory() as root:
    started = time.perf_counter()
    processes = [subprocess.Popen(_command(os.path.join(root, f'run_{i}')),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(count)]
    for process in processes:
      if process.wait():
        raise RuntimeError(f'train.py failed (exit {process.returncode}): {_command(root)}')
    return time.perf_counter() - started


def main(argv):
  del argv
  rows = []
  for count in (1, 2):
    seconds = _run_at_once(count)
    rows.append((count, seconds, count * _STEPS.value / seconds))
  alone = rows[0][2]
  print('\n'.join([
      f'Study runs at once ({_VARIANT.value}, small regime, {_STEPS.value} steps each, '
      'wall time from start to the last exit)',
      *(f'  {k:12s} {v}' for k, v in machine.describe().items()), '',
      '| runs at once | wall s | steps/s, all runs | vs one at a time |', '|---|---|---|---|',
      *(f'| {count} | {seconds:.0f} | {rate:.2f} | {rate / alone:.2f}x |'
        for count, seconds, rate in rows)]))


if __name__ == '__main__':
  app.run(main)
