"""checkpoints.py: save/restore of state and data position, config.json, fallbacks."""

import glob
import hashlib
import json
import os

import grain
import jax
import numpy as np
import pytest

import conftest
from transformer import checkpoints
from transformer import cli
from transformer import config_utils


def state_at(step):
  """A small pytree of distinct shapes whose values say which step saved it."""
  return {'step': np.int32(step), 'w': np.full((3, 5), step, np.float32),
          'b': np.arange(7, dtype=np.float32) * step}


def data_iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def save_steps(workdir, steps, max_to_keep=10):
  checkpointer = checkpoints.Checkpointer(workdir, max_to_keep=max_to_keep)
  iterator = data_iterator()
  for step in steps:
    next(iterator)
    checkpointer.save(step, state_at(step), iterator)
  checkpointer.wait_until_finished()
  checkpointer.close()


def abstract():
  return jax.eval_shape(lambda: state_at(0))


def test_latest_state_and_data_position_come_back(tmp_path):
  save_steps(str(tmp_path), [1, 2, 3], max_to_keep=2)
  assert checkpoints.saved_steps(str(tmp_path)) == [2, 3]  # max_to_keep=2 keeps the newest.
  checkpointer = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2)
  iterator = data_iterator()
  state = checkpointer.restore(abstract(), iterator)
  checkpointer.close()
  jax.tree.map(np.testing.assert_array_equal, state, state_at(3))
  assert next(iterator) == 3  # Three elements were drawn before the save of step 3.


def test_saved_steps_of_a_missing_folder_is_empty_and_creates_nothing(tmp_path):
  assert checkpoints.saved_steps(str(tmp_path / 'run')) == []
  assert not (tmp_path / 'run').exists()


def test_restore_params_by_step_latest_and_best_falling_back_to_latest(tmp_path):
  save_steps(str(tmp_path), [2, 4])
  for which, step in (('2', 2), ('latest', 4), ('best', 4)):  # No best/: the latest.
    state, found = checkpoints.restore_params(str(tmp_path), which, abstract())
    assert found == step
    np.testing.assert_array_equal(state['w'], state_at(step)['w'])


@pytest.mark.parametrize('which, message', [
    ('3', r'--checkpoint=3: .*checkpoints has no step 3 \(it has \[2, 4\]\)'),
    ('last', r"--checkpoint=last: give 'best', 'latest' or a step number")])
def test_restore_params_of_a_missing_step_is_a_user_error(tmp_path, which, message):
  save_steps(str(tmp_path), [2, 4])
  with pytest.raises(cli.UserError, match=message):
    checkpoints.restore_params(str(tmp_path), which, abstract())


def test_decode_falls_back_from_a_corrupt_checkpoint_and_moves_nothing(tmp_path, caplog):
  save_steps(str(tmp_path), [2, 4])
  for path in glob.glob(str(tmp_path / 'checkpoints' / '4' / 'state' / 'd' / '*')):
    os.truncate(path, 10)
  before = sorted(glob.glob(str(tmp_path / '**'), recursive=True))
  with caplog.at_level('WARNING'):
    state, step = checkpoints.restore_params(str(tmp_path), 'latest', abstract())
  assert step == 2
  np.testing.assert_array_equal(state['b'], state_at(2)['b'])
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == 'WARNING' and r.pathname == checkpoints.__file__]
  assert len(warnings) == 1 and 'checkpoints/4 cannot be restored' in warnings[0]
  assert len(warnings[0]) < 700  # One line, not tensorstore's kilobytes.
  assert sorted(glob.glob(str(tmp_path / '**'), recursive=True)) == before


def test_config_json_round_trip_and_vocabulary_hash(bible_config, bible_tokenizer, tmp_path):
  config = conftest.tiny_config(bible_config.data_dir)
  checkpoints.save_config(str(tmp_path), config, bible_tokenizer)
  record = json.loads((tmp_path / checkpoints.CONFIG_FILE).read_text())
  with open(bible_tokenizer.model_path, 'rb') as f:
    assert record.pop(checkpoints.VOCABULARY_KEY)['sha256'] == hashlib.sha256(f.read()).hexdigest()
  assert record == config_utils.to_dict(config)
  assert config_utils.to_dict(checkpoints.load_config(str(tmp_path))) == record
  checkpoints.check_config(str(tmp_path), config)  # The same config resumes.
  config.num_train_steps += 5  # A resumable field.
  checkpoints.check_config(str(tmp_path), config)
  config.label_smoothing = 0.25
  with pytest.raises(cli.UserError, match=r'label_smoothing: 0\.0 in the workdir, 0\.25 now'):
    checkpoints.check_config(str(tmp_path), config)


def test_checkpoints_without_config_json_are_claimed_by_no_config(bible_config, tmp_path):
  save_steps(str(tmp_path), [2])
  with pytest.raises(cli.UserError, match=r"holds checkpoints but no config\.json"):
    checkpoints.check_config(str(tmp_path), conftest.tiny_config(bible_config.data_dir))


def test_load_config_of_a_folder_that_is_no_workdir(tmp_path):
  with pytest.raises(cli.UserError, match='is not a training workdir'):
    checkpoints.load_config(str(tmp_path))


def test_a_workdir_older_than_added_fields_loads_and_resumes(bible_config, tmp_path):
  """config.json written before ADDED_FIELDS existed: they read as what that run did."""
  recorded = config_utils.to_dict(bible_config)
  del recorded['max_train_pairs'], recorded['model']['positions']
  with open(tmp_path / checkpoints.CONFIG_FILE, 'w') as f:
    json.dump(recorded, f)
  loaded = checkpoints.load_config(str(tmp_path))
  assert loaded.max_train_pairs == 0 and loaded.model.positions == 'sinusoidal'
  checkpoints.check_config(str(tmp_path), bible_config)  # The same experiment: no error.
  changed = bible_config.copy_and_resolve_references()
  changed.max_train_pairs = 100
  with pytest.raises(cli.UserError, match='max_train_pairs: 0 in the workdir, 100 now'):
    checkpoints.check_config(str(tmp_path), changed)
