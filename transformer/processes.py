"""Jobs in spawned processes, a few at a time, that stop when asked and start nothing after.

The study trains runs side by side, each in its own process (a forked JAX runtime is not
safe, so they are spawned). A pool of long-lived workers does not fit: Ctrl-C reaches every
worker, each saves its run, and the pool hands it the next queued run, which trains to its
end while the parent waits. Here a process is started per job, only while fewer than
`parallel` run, so stopping is simple: on Ctrl-C or SIGTERM to the parent, or when a job
fails, every running process gets SIGTERM (a training run saves and exits) and no job
starts after.
"""

import multiprocessing
from multiprocessing import connection
import signal
from typing import Any, Callable, Optional, Sequence

# Exit status of a job that stopped at its deadline, saved: the others finish theirs, and no
# job starts after it.
DEADLINE_EXIT = 3


class Interrupted(BaseException):
  """SIGTERM reached the parent; raised where it waits (as Ctrl-C raises KeyboardInterrupt)."""


def _raise_interrupted(signum, frame):
  del signum, frame
  raise Interrupted('SIGTERM')


def run(target: Callable[..., Any], jobs: Sequence[tuple], parallel: int,
        initializer: Optional[Callable[[], None]] = None) -> list[Optional[int]]:
  """target(*job) for each job in its own spawned process, at most `parallel` at once.

  `initializer()` runs first in each process (a spawned process starts bare: e.g. its logs
  are not yet set up as the parent's).

  Returns each job's exit status, None for one never started. Jobs start in order until one
  exits non-zero: after DEADLINE_EXIT the running ones end on their own; after any other
  status they are sent SIGTERM. Ctrl-C or SIGTERM here sends them SIGTERM too, waits for
  them, and is raised (KeyboardInterrupt, Interrupted).
  """
  context = multiprocessing.get_context('spawn')
  statuses: list[Optional[int]] = [None] * len(jobs)
  running: dict[int, tuple[int, Any]] = {}  # sentinel -> (job index, process)
  next_job, stopping = 0, False
  previous = signal.signal(signal.SIGTERM, _raise_interrupted)
  try:
    while running or (next_job < len(jobs) and not stopping):
      while next_job < len(jobs) and len(running) < parallel and not stopping:
        process = context.Process(target=_start, args=(initializer, target, jobs[next_job]))
        process.start()
        running[process.sentinel] = (next_job, process)
        next_job += 1
      for sentinel in connection.wait(list(running)):
        index, process = running.pop(sentinel)
        process.join()
        statuses[index] = process.exitcode
        if process.exitcode != 0 and not stopping:
          stopping = True
          if process.exitcode != DEADLINE_EXIT:
            _terminate(running.values())
  except BaseException:
    _terminate(running.values())
    for _, process in running.values():
      process.join()
    raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  return statuses


def _start(initializer: Optional[Callable[[], None]], target: Callable[..., Any],
           job: tuple) -> None:
  if initializer is not None:
    initializer()
  target(*job)


def _terminate(running) -> None:
  for _, process in running:
    if process.is_alive():
      process.terminate()
