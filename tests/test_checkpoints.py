"""checkpoints.py: orbax save/restore of state and data position, partial restore, fallbacks."""

import glob
import os
import sys
import types

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from transformer import checkpoints
from transformer import workdir as workdir_lib


def state_at(step):
  """A small TrainState-like pytree of distinct shapes whose values say which step saved it."""
  return {'step': np.int32(step),
          'params': {'w': np.full((3, 5), step, np.float32),
                     'b': np.arange(7, dtype=np.float32) * step},
          'batch_stats': {'mean': np.full((5,), -step, np.float32)},
          'opt_state': {'mu': np.full((3, 5), 100 + step, np.float32)}}


def data_iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def save_steps(folder, steps, max_to_keep=10):
  checkpointer = workdir_lib.Workdir(folder).checkpointer(max_to_keep)
  iterator = data_iterator()
  for step in steps:
    next(iterator)
    checkpointer.save(step, state_at(step), iterator)
  checkpointer.wait_until_finished()
  checkpointer.close()


def abstract():
  return jax.eval_shape(lambda: state_at(0))


def abstract_variables(fields=('params', 'batch_stats')):
  return {k: v for k, v in abstract().items() if k in fields}


def test_latest_state_and_data_position_come_back(tmp_path):
  save_steps(str(tmp_path), [1, 2, 3], max_to_keep=2)
  latest = str(tmp_path / workdir_lib.CHECKPOINTS)
  assert checkpoints.saved_steps(latest) == [2, 3]  # max_to_keep=2 keeps the newest.
  checkpointer = workdir_lib.Workdir(str(tmp_path)).checkpointer(2)
  iterator = data_iterator()
  state = checkpointer.restore(abstract(), iterator)
  checkpointer.close()
  jax.tree.map(np.testing.assert_array_equal, state, state_at(3))
  assert next(iterator) == 3  # Three elements were drawn before the save of step 3.


def test_saved_steps_of_a_missing_folder_is_empty_and_creates_nothing(tmp_path):
  assert checkpoints.saved_steps(str(tmp_path / 'run')) == []
  assert not (tmp_path / 'run').exists()


def test_restore_variables_reads_only_the_model_fields(tmp_path, monkeypatch):
  """The optimizer state is not read: restoring with a tree that lacks it never touches it."""
  save_steps(str(tmp_path), [2])
  latest = str(tmp_path / workdir_lib.CHECKPOINTS)
  read = []
  real = ocp.PyTreeCheckpointHandler.restore

  def spy(self, directory, args=None):
    read.append(jax.tree_util.tree_structure(args.item))
    return real(self, directory, args=args)

  monkeypatch.setattr(ocp.PyTreeCheckpointHandler, 'restore', spy)
  variables = checkpoints.restore_variables(latest, 2, abstract_variables())
  assert set(variables) == {'params', 'batch_stats'}
  np.testing.assert_array_equal(variables['params']['w'], state_at(2)['params']['w'])
  np.testing.assert_array_equal(variables['batch_stats']['mean'],
                                state_at(2)['batch_stats']['mean'])
  assert read == [jax.tree_util.tree_structure(abstract_variables())]


def test_average_is_the_elementwise_mean():
  averaged = checkpoints.average_variables([
      {k: state_at(s)[k] for k in ('params', 'batch_stats')} for s in (2, 4, 9)])
  np.testing.assert_allclose(averaged['params']['b'], np.arange(7) * 5.0)
  np.testing.assert_allclose(averaged['batch_stats']['mean'], np.full((5,), -5.0))


def test_restore_first_readable_skips_a_corrupt_checkpoint_and_moves_nothing(tmp_path, caplog):
  save_steps(str(tmp_path), [2, 4])
  latest = str(tmp_path / workdir_lib.CHECKPOINTS)
  for path in glob.glob(os.path.join(latest, '4', 'state', 'd', '*')):
    os.truncate(path, 10)
  before = sorted(glob.glob(str(tmp_path / '**'), recursive=True))
  with caplog.at_level('WARNING'):
    variables, _, step = checkpoints.restore_first_readable(
        [(latest, 4), (latest, 2)], abstract_variables())
  assert step == 2
  np.testing.assert_array_equal(variables['params']['b'], state_at(2)['params']['b'])
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == 'WARNING' and r.pathname == checkpoints.__file__]
  assert len(warnings) == 1 and '/4 cannot be restored' in warnings[0]
  assert '\n' not in warnings[0] and len(warnings[0]) < 700  # Not tensorstore's kilobytes.
  assert sorted(glob.glob(str(tmp_path / '**'), recursive=True)) == before


def test_reads_of_a_failed_restore_are_dropped_during_and_after_it(monkeypatch):
  """Its abandoned coroutines, and reads that end after its event loop closed (during the
  restore or later, in tensorstore's threads), are not printed; other errors still are."""
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)

  def unraisable(error, obj=None):
    return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None,
                                 err_msg=None, object=obj)

  async def read():
    pass

  late, other = RuntimeError('Event loop is closed'), ValueError('a real bug')
  coroutine = read()
  with pytest.raises(OSError):
    with checkpoints._abandoned_reads_dropped():  # pylint: disable=protected-access
      sys.unraisablehook(unraisable(late))
      sys.unraisablehook(unraisable(RuntimeError('x'), coroutine))
      sys.unraisablehook(unraisable(other))
      raise OSError('the restore failed')
  coroutine.close()
  sys.unraisablehook(unraisable(late))  # A read that ended after the restore returned.
  sys.unraisablehook(unraisable(other))
  assert [u.exc_value for u in seen] == [other, other]
  with checkpoints._abandoned_reads_dropped():  # pylint: disable=protected-access
    pass  # A restore that succeeds leaves the hook as it found it: no chain grows.
  sys.unraisablehook(unraisable(late))
  assert [u.exc_value for u in seen] == [other, other]
