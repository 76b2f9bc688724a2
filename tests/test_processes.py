"""Jobs in spawned processes: at most N at once, and a failure, a deadline or SIGTERM to the
parent stops them as the study needs (tests use cheap jobs that mark files, not training)."""

import functools
import os
import re
import signal
import sys
import threading
import time

import pytest

from transformer import processes

SAVED_EXIT = 5  # What a job exits with after saving on SIGTERM (a training run saves too).


def job(folder: str, index: int, kind: str, seconds: float) -> None:
  """Marks that it started and how many jobs run beside it, then sleeps, fails or stops at
  its deadline; on SIGTERM it marks 'saved' and exits."""
  mark = lambda name: open(os.path.join(folder, f'{name}_{index}'), 'w').close()

  def saved(signum, frame):
    del signum, frame
    mark('saved')
    sys.exit(SAVED_EXIT)

  signal.signal(signal.SIGTERM, saved)
  mark('running')
  together = sum(name.startswith('running_') for name in os.listdir(folder))
  with open(os.path.join(folder, f'together_{index}'), 'w') as f:
    f.write(str(together))
  mark('started')
  time.sleep(seconds)
  os.remove(os.path.join(folder, f'running_{index}'))
  if kind == 'fail':
    sys.exit(2)
  if kind == 'deadline':
    sys.exit(processes.DEADLINE_EXIT)


def marked(folder, name: str) -> list[int]:
  return sorted(int(f.split('_')[1]) for f in os.listdir(folder) if f.startswith(name + '_'))


def test_at_most_parallel_jobs_run_at_once_and_every_one_runs(tmp_path):
  jobs = [(str(tmp_path), i, 'sleep', 1.0) for i in range(4)]
  assert processes.run(job, jobs, parallel=2) == [0, 0, 0, 0]
  assert marked(tmp_path, 'started') == [0, 1, 2, 3]
  assert max(int((tmp_path / f'together_{i}').read_text()) for i in range(4)) <= 2


def test_a_failed_job_stops_the_running_ones_and_starts_none_after(tmp_path):
  jobs = [(str(tmp_path), 0, 'fail', 0.5), (str(tmp_path), 1, 'sleep', 60.0),
          (str(tmp_path), 2, 'sleep', 0.0)]
  assert processes.run(job, jobs, parallel=2) == [2, SAVED_EXIT, None]
  assert marked(tmp_path, 'saved') == [1] and marked(tmp_path, 'started') == [0, 1]


def test_a_job_at_its_deadline_lets_the_others_finish_and_starts_none_after(tmp_path):
  jobs = [(str(tmp_path), 0, 'deadline', 0.5), (str(tmp_path), 1, 'sleep', 2.0),
          (str(tmp_path), 2, 'sleep', 0.0)]
  assert processes.run(job, jobs, parallel=2) == [processes.DEADLINE_EXIT, 0, None]
  assert marked(tmp_path, 'saved') == []


def test_sigterm_to_the_parent_stops_every_job_and_is_raised(tmp_path):
  """Once both jobs run, SIGTERM reaches this process: both save, the third never starts, and
  the handler this process had before is back."""
  before = signal.getsignal(signal.SIGTERM)

  def kill_when_both_started():
    while len(marked(tmp_path, 'started')) < 2:
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=kill_when_both_started, daemon=True).start()
  jobs = [(str(tmp_path), i, 'sleep', 60.0) for i in range(2)] + [(str(tmp_path), 2, 'sleep', 0.0)]
  with pytest.raises(processes.Interrupted):
    processes.run(job, jobs, parallel=2)
  assert marked(tmp_path, 'saved') == [0, 1] and marked(tmp_path, 'started') == [0, 1]
  assert signal.getsignal(signal.SIGTERM) == before


def logging_job(folder: str) -> None:
  """Logs as a run does: the project's INFO line, and orbax's warnings of a read-only
  checkpoint manager (which a reader asked for)."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  logging.info('an evaluation of the run')
  with ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(read_only=True)):
    pass


def test_a_spawned_job_logs_as_its_parent(tmp_path, capfd):
  """Without the initializer a spawned run drops the project's INFO lines and prints
  orbax's warnings in Python's bare format."""
  from transformer import cli  # pylint: disable=g-import-not-at-top
  statuses = processes.run(logging_job, [(str(tmp_path),)], parallel=1,
                           initializer=functools.partial(cli.log_as_in_parent, ['study.py']))
  assert statuses == [0]
  logged = capfd.readouterr().err
  assert re.search(r'^I\d{4} .*\] an evaluation of the run$', logged, re.MULTILINE), logged
  assert 'read only' not in logged.replace('_', ' ') and 'WARNING:absl' not in logged, logged
  assert 'before flag parsing' not in logged, logged
