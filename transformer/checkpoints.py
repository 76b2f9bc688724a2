"""Orbax checkpoints of a run: the latest few for resuming, the best by validation BLEU.

A checkpoint holds the whole `TrainState` (params, optimizer state, step, RNG, NaN counters)
and the grain iterator's state, saved at the same step, so a resumed run sees the same
batches as an unbroken one. Inference restores only what the model computes with (params and
BatchNorm statistics) by orbax's partial restore: no optimizer moments in memory.

This module knows orbax, not the run folder: `workdir.Workdir` gives it the directories.
"""

import contextlib
import gc
import inspect
import os
import sys
import time
from typing import Any, Optional

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from transformer import cli

# What inference reads of a TrainState: the fields the model computes with.
MODEL_FIELDS = ('params', 'batch_stats')


def saved_steps(directory: str) -> list[int]:
  """Steps saved in `directory`, read without writing anything ([] if it does not exist).

  The manager is this process's alone (orbax's active_processes): whether the folder exists
  yet depends on how far process 0 has got, so a manager of all processes would meet them at
  a barrier some never reach.
  """
  if not os.path.isdir(directory):
    return []
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, multiprocessing_options=alone)) as manager:
    return sorted(manager.all_steps())


def _gist(error: Exception) -> str:
  """An error on one line, short enough for a log: tensorstore's run to kilobytes."""
  text = ' '.join(str(error).split()).split(' [tensorstore_spec')[0]
  text = f'{type(error).__name__}: {text}'
  return text if len(text) <= 400 else f'{text[:150]} ... {text[-250:]}'


def _is_abandoned_read(unraisable) -> bool:
  """One of a failed restore's reads: a coroutine collected unawaited, or a read that
  finished after orbax had closed the restore's event loop (its callback finds it closed)."""
  error = unraisable.exc_value
  return inspect.iscoroutine(unraisable.object) or (
      isinstance(error, RuntimeError) and str(error) == 'Event loop is closed')


class _AbandonedReadsDropped:
  """sys.unraisablehook that counts a failed restore's reads and passes anything else on."""

  def __init__(self, previous):
    self.previous, self.dropped = previous, 0

  def __call__(self, unraisable):
    if _is_abandoned_read(unraisable):
      self.dropped += 1
    else:
      self.previous(unraisable)


@contextlib.contextmanager
def _abandoned_reads_dropped():
  """Silences the reads a failed orbax restore leaves behind, counting them in one line.

  Each of the failed checkpoint's pending tensorstore reads is collected unawaited and Python
  prints "Exception ignored in: <coroutine ...>" for it, or ends after the restore's event
  loop closed ("Event loop is closed"): thousands of lines for one checkpoint. After a failed
  restore the hook stays, for the reads that end later in tensorstore's threads; a hook left
  by an earlier failure is replaced, not wrapped.
  """
  previous = sys.unraisablehook
  hook = _AbandonedReadsDropped(previous.previous if isinstance(
      previous, _AbandonedReadsDropped) else previous)
  sys.unraisablehook = hook
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    gc.collect()
    if not failed:
      sys.unraisablehook = previous
    if hook.dropped:
      logging.info('Dropped %d abandoned reads of the failed restore.', hook.dropped)


class Checkpointer:
  """The latest checkpoints (with data state) and the best one by validation BLEU."""

  def __init__(self, latest_dir: str, best_dir: str, corrupt_dir: str, *, max_to_keep: int):
    self._directory = latest_dir
    self._corrupt_dir = corrupt_dir
    self._latest = ocp.CheckpointManager(
        latest_dir,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True),
        item_names=('state', 'data'),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})
    self._best = ocp.CheckpointManager(
        best_dir,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics['bleu'], best_mode='max', create=True),
        item_names=('state',))

  def latest_step(self) -> Optional[int]:
    return self._latest.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    self._latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)))

  def save_best(self, step: int, state: Any, bleu: float) -> None:
    self._best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                    metrics={'bleu': float(bleu)})

  def restore(self, abstract_state: Any, data_iterator: Any) -> Any:
    """Restores the newest readable state (and the iterator, in place); None if there is none.

    A checkpoint that fails to restore (a file truncated, or lost with a disk) is skipped
    with a one-line warning and the one before it is used: the run loses the steps since
    then instead of not starting. Skipped ones are moved to the corrupt folder, which frees
    their step numbers for new saves. If none restores, nothing is moved and the error names
    them all: then the cause is more likely the code than the files.
    """
    failures = []
    for step in sorted(self._latest.all_steps(), reverse=True):
      try:
        with _abandoned_reads_dropped():
          restored = self._latest.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=grain.checkpoint.CheckpointRestore(data_iterator)))
      except Exception as e:  # pylint: disable=broad-exception-caught
        failures.append((step, _gist(e)))
        _warn_unreadable(f'of step {step}', e)
        continue
      for bad_step, _ in failures:
        self._set_aside(bad_step)
      logging.info('Resumed from the checkpoint of step %d.', step)
      return restored.state
    if failures:
      raise cli.UserError(f'No checkpoint in {self._directory} can be restored:\n  ' +
                          '\n  '.join(f'step {step}: {why}' for step, why in failures))
    return None

  def _set_aside(self, step: int) -> None:
    """Moves an unreadable checkpoint out of the manager's way, keeping it for inspection."""
    corrupt = os.path.join(self._corrupt_dir, str(step))
    if jax.process_index() == 0:
      os.makedirs(self._corrupt_dir, exist_ok=True)
      if os.path.exists(corrupt):
        corrupt += f'.{time.time_ns()}'
      os.replace(os.path.join(self._directory, str(step)), corrupt)
      logging.warning('Moved the unreadable checkpoint of step %d to %s.', step, corrupt)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'set_aside_checkpoint_{step}')
    self._latest.reload()

  def wait_until_finished(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def _warn_unreadable(where: str, error: Exception) -> None:
  """One readable line; the TensorStore dump only with --verbose (logged at DEBUG)."""
  logging.warning('The checkpoint %s cannot be restored (%s); trying the one before.',
                  where, _gist(error))
  logging.debug('Why %s cannot be restored: %r', where, error)


def restore_variables(directory: str, step: int, abstract_variables: dict) -> dict:
  """The model variables (params, BatchNorm statistics) of one saved TrainState.

  `abstract_variables` holds jax.ShapeDtypeStructs (with the sharding each array should
  have) for the MODEL_FIELDS the model uses; the rest of the state (Adam's moments, 2x the
  parameters) is never read.
  """
  with _abandoned_reads_dropped(), ocp.CheckpointManager(
      directory, item_names=('state',), item_handlers={'state': ocp.PyTreeCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=abstract_variables,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables),
        partial_restore=True)))
  return restored.state


def restore_first_readable(candidates: list[tuple[str, int]], abstract_variables: dict
                           ) -> tuple[dict, str, int]:
  """(variables, directory, step) of the first (directory, step) that restores.

  As in training, a checkpoint that cannot be read is skipped with a one-line warning;
  nothing is moved (decoding writes nothing into a run folder).
  """
  failures = []
  for directory, step in candidates:
    try:
      return restore_variables(directory, step, abstract_variables), directory, step
    except Exception as e:  # pylint: disable=broad-exception-caught
      failures.append(f'{directory}/{step}: {_gist(e)}')
      _warn_unreadable(f'{directory}/{step}', e)
  raise cli.UserError('No checkpoint can be restored:\n  ' + '\n  '.join(failures))


def average_variables(variables: list[dict]) -> dict:
  """The element-wise mean of several checkpoints' variables, in float32.

  Averaging the running mean and variance along with the weights keeps BatchNorm's
  statistics those of (nearly) the same network (Vaswani et al. 2017, 6.1, average the last
  checkpoints' weights).
  """
  return jax.tree.map(
      lambda *leaves: sum(leaf.astype(jax.numpy.float32) for leaf in leaves) / len(leaves),
      *variables)
