"""Kills a tiny training run at random moments and checks it ends as if it had never been.

  python scripts/fault_injection.py --workdir=/tmp/fi --kills=10 --seed=0

Trains a tiny model once unbroken, then again with SIGKILL sent `--kills` times at seeded
random moments, restarting the same command after each until it finishes. The moments are
of three kinds in turn: while orbax writes a checkpoint (once its `*.orbax-checkpoint-tmp*`
folder appears), a few steps into training, and during start-up (restore, data, compiling).
The two runs'
final TrainStates (parameters, optimizer state, RNG, counters), data iterator states and
metrics.jsonl rows (less the wall-clock `time/` keys) must be equal bit for bit. Prints
"survived N/K kills"; exits 1 on a mismatch or a failed restart.

A persistent JAX compilation cache (in the workdir) makes each restart a few seconds; both
runs use it, and a cached executable computes what a fresh compilation does.
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from transformer import workdir as workdir_lib

_KILLS = flags.DEFINE_integer('kills', 10, 'SIGKILLs to send to the training run.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seeds the kill moments (not the training).')
_STEPS = flags.DEFINE_integer('steps', 0, 'Training steps; 0 = 3 * kills + 4, enough to '
                              'land every kill before the run ends.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Holds both runs, their logs and the cache.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'A prepared TFDS data_dir with the Bible; '
                                "'' = <workdir>/tfds, built by the first run.")
_TIMEOUT = 600  # Seconds any one run may take.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny model, evaluation off (BLEU decoding would dominate), a checkpoint every 2 steps.
TINY = {
    'batch_size': 4, 'max_length': 32, 'max_target_length': 28, 'model.emb_dim': 16,
    'model.qkv_dim': 16, 'model.mlp_dim': 32, 'model.num_heads': 2, 'model.num_layers': 1,
    'eval_every_steps': 0, 'checkpoint_every_steps': 2, 'diagnostics_every_steps': 0,
    'log_every_steps': 1,
}


def train_command(workdir: str, steps: int, data_dir: str) -> list[str]:
  overrides = {**TINY, 'num_train_steps': steps, 'data_dir': data_dir}
  return [sys.executable, os.path.join(ROOT, 'train.py'),
          '--config=' + os.path.join(ROOT, 'configs', 'baseline.py') + ':small',
          f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in overrides.items()]


def start(command: list[str], log_path: str, cache_dir: str) -> subprocess.Popen:
  """Starts a run in its own process group, so that a kill takes any child process too."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=cache_dir)
  with open(log_path, 'w') as log:
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)


def kill(process: subprocess.Popen) -> None:
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()


def wait_until(process: subprocess.Popen, condition) -> bool:
  """Polls `condition` until it holds (True) or the process ends first (False)."""
  deadline = time.monotonic() + _TIMEOUT
  while process.poll() is None and time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.01)
  return False


def saves_in_progress(workdir: str) -> set[tuple[str, int, int]]:
  """Orbax's temporary checkpoint folders, each as (name, inode, mtime): a killed run's
  leftover keeps its identity, a new save of the same step gets a new one."""
  found = set()
  for path in glob.glob(os.path.join(workdir, workdir_lib.CHECKPOINTS, '*orbax-checkpoint-tmp*')):
    try:
      stat = os.stat(path)
    except FileNotFoundError:  # Renamed into place since the glob.
      continue
    found.add((os.path.basename(path), stat.st_ino, stat.st_mtime_ns))
  return found


def checkpoint_steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, workdir_lib.CHECKPOINTS)
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(name) for name in names if name.isdigit())


def last_train_step(workdir: str) -> int:
  """The last step with a train/loss row (0 if none), however the file was left."""
  logging.set_verbosity(logging.ERROR)  # A half-written row is expected here.
  try:
    rows = workdir_lib.Workdir(workdir).metrics()
  except (OSError, ValueError):
    return 0
  finally:
    logging.set_verbosity(logging.INFO)
  return max((row['step'] for row in rows if 'train/loss' in row), default=0)


KINDS = ('save', 'step', 'start-up')  # Kill i is of kind i % 3: a third land in a save.


def kill_at_random_moment(process, workdir: str, kind: str, steps: int, rng: random.Random,
                          startup_seconds: float) -> str:
  """Sends one SIGKILL of `kind` at a moment drawn by `rng`; '' if the run ended first."""
  resumed = max(checkpoint_steps(workdir), default=0)
  written = max(resumed, last_train_step(workdir))  # Rows a killed run left past its checkpoint.
  leftovers = saves_in_progress(workdir)  # Of the run killed before: not this run's saves.
  if kind == 'save':
    condition = lambda: bool(saves_in_progress(workdir) - leftovers)
  elif kind == 'step':
    target = min(written + rng.randint(1, 3), steps - 1)
    condition = lambda: last_train_step(workdir) >= target
  else:
    deadline = time.monotonic() + rng.uniform(0.0, startup_seconds)
    condition = lambda: time.monotonic() >= deadline
  if not wait_until(process, condition):
    return ''
  if kind == 'save':
    time.sleep(rng.uniform(0.0, 0.03))  # Somewhere in the save's first tens of milliseconds.
    saving = saves_in_progress(workdir) - leftovers
    where = 'during a save' if saving else 'just after a save'
  elif kind == 'step':
    where = f'at step {last_train_step(workdir)}'
  else:
    where = 'during start-up'
  kill(process)
  return f'{where} (resumed from step {resumed})'


def final_state(workdir: str):
  """(step, TrainState leaves, data iterator state) of the workdir's latest checkpoint."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(os.path.join(workdir, workdir_lib.CHECKPOINTS), item_names=('state',),
                             options=options) as manager:
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  data = {}
  for path in glob.glob(os.path.join(workdir, workdir_lib.CHECKPOINTS, str(step), 'data', '*.json')):
    with open(path) as f:
      data[os.path.basename(path)] = json.load(f)
  return step, jax.tree_util.tree_leaves_with_path(state.state), data


def metric_rows(workdir: str) -> list[dict]:
  from transformer import metrics  # pylint: disable=g-import-not-at-top
  rows = [{k: v for k, v in row.items() if not k.startswith(metrics.WALL_CLOCK_PREFIX)}
          for row in workdir_lib.Workdir(workdir).metrics()]
  return [row for row in rows if len(row) > 1]


def differences(unbroken: str, killed: str) -> list[str]:
  """What differs between the two workdirs' results; empty if they are identical."""
  step_a, leaves_a, data_a = final_state(unbroken)
  step_b, leaves_b, data_b = final_state(killed)
  found = []
  if step_a != step_b:
    found.append(f'final checkpoint step {step_a} != {step_b}')
  for (path, a), (_, b) in zip(leaves_a, leaves_b):
    if not np.array_equal(np.asarray(a), np.asarray(b)):
      found.append(f'state{"".join(map(str, path))}: max |diff| '
                   f'{np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))}')
  if len(leaves_a) != len(leaves_b):
    found.append(f'{len(leaves_a)} state leaves != {len(leaves_b)}')
  if data_a != data_b:
    found.append(f'data iterator state {data_a} != {data_b}')
  rows_a, rows_b = metric_rows(unbroken), metric_rows(killed)
  for row_a, row_b in zip(rows_a, rows_b):
    if row_a != row_b:
      found.append(f'metrics row {row_a} != {row_b}')
      break
  if len(rows_a) != len(rows_b):
    found.append(f'{len(rows_a)} metrics rows != {len(rows_b)}')
  return found


def main(argv):
  del argv
  kills, rng = _KILLS.value, random.Random(_SEED.value)
  steps = _STEPS.value or 3 * kills + 4
  root = os.path.abspath(_WORKDIR.value)
  data_dir = _DATA_DIR.value or os.path.join(root, 'tfds')
  cache, logs = os.path.join(root, 'jax_cache'), os.path.join(root, 'logs')
  unbroken, killed = os.path.join(root, 'unbroken'), os.path.join(root, 'killed')
  for folder in (unbroken, killed):
    if os.path.exists(folder):
      sys.exit(f'{folder} exists; give a fresh --workdir.')
  os.makedirs(logs, exist_ok=True)
  began = time.monotonic()

  process = start(train_command(unbroken, steps, data_dir), f'{logs}/unbroken.log', cache)
  if process.wait(_TIMEOUT):
    sys.exit(f'The unbroken run failed; see {logs}/unbroken.log')
  # Start-up kills land anywhere before the first step of a cached (warm) restart.
  startup_seconds = 8.0

  delivered, run = [], 0
  while len(delivered) < kills:
    process = start(train_command(killed, steps, data_dir), f'{logs}/killed_{run}.log', cache)
    run += 1
    moment = kill_at_random_moment(process, killed, KINDS[len(delivered) % len(KINDS)], steps,
                                   rng, startup_seconds)
    if not moment:
      break
    delivered.append(moment)
    logging.info('Kill %d/%d: %s.', len(delivered), kills, moment)
  else:
    process = start(train_command(killed, steps, data_dir), f'{logs}/killed_{run}.log', cache)
  if process.wait(_TIMEOUT):
    print(f'FAILED: restart {run} exited with {process.returncode}; see {logs}/killed_{run}.log')
    sys.exit(1)

  found = differences(unbroken, killed)
  seconds = time.monotonic() - began
  if found:
    print('MISMATCH with the unbroken run:\n  ' + '\n  '.join(found))
    print(f'survived 0/{kills} kills ({len(delivered)} sent; {seconds:.0f} s)')
    sys.exit(1)
  print('\n'.join(f'kill {i}: {moment}' for i, moment in enumerate(delivered, 1)))
  print(f'survived {len(delivered)}/{kills} kills ({steps} steps, identical to the unbroken '
        f'run bit for bit; {seconds:.0f} s)')
  if len(delivered) < kills:
    print(f'The run finished before kill {len(delivered) + 1}; give more --steps.')
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  sys.path.insert(0, ROOT)
  app.run(main)
