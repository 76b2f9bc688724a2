"""workdir.py: the run folder's record, vocabulary, checks before writing, and restore choices."""

import json
import os
import shutil

import numpy as np
import pytest

import conftest
import test_checkpoints
from transformer import cli
from transformer import config_utils
from transformer import tokenizer as tokenizer_lib
from transformer import workdir as workdir_lib


def snapshot(folder) -> dict:
  """{relative path: bytes} of every file under `folder`: what 'nothing changed' means."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def test_config_round_trip_and_vocabulary_fingerprint(bible_config, bible_tokenizer, tmp_path):
  config = conftest.tiny_config(bible_config.data_dir)
  run = workdir_lib.Workdir(str(tmp_path / 'run'))
  run.start(config, bible_tokenizer)
  record = json.loads((tmp_path / 'run' / workdir_lib.CONFIG).read_text())
  assert record.pop('vocabulary') == {
      'file': workdir_lib.VOCABULARY,
      'fingerprint': tokenizer_lib.fingerprint(bible_tokenizer.model_path)}
  assert record == config_utils.to_dict(config)
  again = workdir_lib.Workdir(run.path)
  assert config_utils.to_dict(again.config()) == record
  assert again.tokenizer().encode('Jésus pleura.') == bible_tokenizer.encode('Jésus pleura.')
  again.check_before_training(config)  # The same config resumes.
  config.num_train_steps += 5  # A resumable field.
  again.check_before_training(config)
  config.label_smoothing = 0.25
  with pytest.raises(cli.UserError, match=r'label_smoothing: 0\.0 in the workdir, 0\.25 now'):
    again.check_before_training(config)


def test_a_vocabulary_with_other_pieces_is_refused(bible_config, bible_tokenizer, tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  run.start(conftest.tiny_config(bible_config.data_dir), bible_tokenizer)
  os.makedirs(tmp_path / 'other')
  other = tokenizer_lib.load_or_train(
      str(tmp_path / 'other'), 30, {'size': 30},
      lambda: ['Au commencement Dieu créa les cieux.', 'In the beginning God created.'] * 50)
  shutil.copyfile(other.model_path, tmp_path / workdir_lib.VOCABULARY)
  with pytest.raises(cli.UserError, match='not the vocabulary this run was trained with'):
    workdir_lib.Workdir(str(tmp_path)).tokenizer()


@pytest.mark.parametrize('owned', [workdir_lib.VOCABULARY, 'plots/train_loss.png',
                                   workdir_lib.METRICS])
def test_a_folder_with_run_files_but_no_config_is_refused_untouched(bible_config, tmp_path,
                                                                     owned):
  path = tmp_path / owned
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'the user\'s own file')
  before = snapshot(tmp_path)
  with pytest.raises(cli.UserError, match=f'holds {owned.split("/")[0]} but no config.json'):
    workdir_lib.Workdir(str(tmp_path)).check_before_training(
        conftest.tiny_config(bible_config.data_dir))
  assert snapshot(tmp_path) == before


def test_a_folder_with_other_files_only_is_a_new_run(bible_config, tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  workdir_lib.Workdir(str(tmp_path)).check_before_training(
      conftest.tiny_config(bible_config.data_dir))


def test_checkpoints_without_config_json_are_claimed_by_no_config(bible_config, tmp_path):
  test_checkpoints.save_steps(str(tmp_path), [2])
  with pytest.raises(cli.UserError, match=r"holds checkpoints but no config\.json"):
    workdir_lib.Workdir(str(tmp_path)).check_before_training(
        conftest.tiny_config(bible_config.data_dir))


@pytest.mark.parametrize('content', ['{"seed": 0', '[1, 2]'])
def test_an_unreadable_config_json_is_one_clear_error(tmp_path, content):
  (tmp_path / workdir_lib.CONFIG).write_text(content)
  with pytest.raises(cli.UserError, match=r'config\.json (cannot be read|is not a config)'):
    workdir_lib.Workdir(str(tmp_path)).config()


def test_config_of_a_folder_that_is_no_run(tmp_path):
  with pytest.raises(cli.UserError, match='is not a training workdir'):
    workdir_lib.Workdir(str(tmp_path)).config()


def test_a_folder_older_than_added_fields_loads_and_resumes(bible_config, tmp_path):
  """config.json written before ADDED_FIELDS existed: they read as what that run did."""
  recorded = config_utils.to_dict(bible_config)
  del recorded['max_train_pairs'], recorded['model']['positions']
  (tmp_path / workdir_lib.CONFIG).write_text(json.dumps(recorded))
  run = workdir_lib.Workdir(str(tmp_path))
  loaded = run.config()
  assert loaded.max_train_pairs == 0 and loaded.model.positions == 'sinusoidal'
  run.check_before_training(bible_config)  # The same experiment: no error.
  changed = bible_config.copy_and_resolve_references()
  changed.max_train_pairs = 100
  with pytest.raises(cli.UserError, match='max_train_pairs: 0 in the workdir, 100 now'):
    run.check_before_training(changed)


def test_owns_names_the_run_files_and_nothing_else(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  for name in ('config.json', 'vocabulary.model', 'checkpoints/4/x', 'plots/a.png',
               'test_hypotheses.en', 'test_hypotheses.average_5.en', 'metrics.jsonl'):
    assert run.owns(str(tmp_path / name)), name
  for name in ('test.en', 'notes/config.json', '../config.json'):
    assert not run.owns(str(tmp_path / name)), name


def test_restore_variables_by_step_latest_and_best_falling_back_to_latest(tmp_path, caplog):
  test_checkpoints.save_steps(str(tmp_path), [2, 4])
  run = workdir_lib.Workdir(str(tmp_path))
  abstract = test_checkpoints.abstract_variables()
  for which, step in (('2', 2), ('latest', 4), ('best', 4)):  # No best/: the latest.
    variables, found, description = run.restore_variables(which, abstract)
    assert found == step and f'step {step}' in description
    assert 'best' not in description  # With no best/, it never says "the best".
    np.testing.assert_array_equal(variables['params']['w'],
                                  test_checkpoints.state_at(step)['params']['w'])
  variables, step, description = run.restore_variables('average:2', abstract)
  np.testing.assert_allclose(variables['params']['w'], np.full((3, 5), 3.0))
  assert step == 4 and '[2, 4]' in description


@pytest.mark.parametrize('which, message', [
    ('3', r'--checkpoint=3: .*checkpoints has no step 3 \(it has \[2, 4\]\)'),
    ('last', r"--checkpoint=last: give 'best', 'latest', a step number or 'average:K'"),
    ('average:0', r'expected average:K with K >= 1'),
    ('average:3', r'holds 2 checkpoints \(\[2, 4\]\), fewer than 3')])
def test_restore_variables_of_a_missing_step_is_a_user_error(tmp_path, which, message):
  test_checkpoints.save_steps(str(tmp_path), [2, 4])
  with pytest.raises(cli.UserError, match=message):
    workdir_lib.Workdir(str(tmp_path)).restore_variables(
        which, test_checkpoints.abstract_variables())


@pytest.mark.parametrize('last_row, refused', [(3, False), (4, True), (5, True)])
def test_metrics_at_two_checkpoint_intervals_without_checkpoints_are_refused(
    bible_config, bible_tokenizer, tmp_path, last_row, refused):
  config = conftest.tiny_config(bible_config.data_dir, checkpoint_every_steps=2)
  run = workdir_lib.Workdir(str(tmp_path))
  run.start(config, bible_tokenizer)
  (tmp_path / workdir_lib.METRICS).write_text(
      ''.join(json.dumps({'step': s, 'train/loss': 1.0}) + '\n' for s in range(1, last_row + 1)))
  before = snapshot(tmp_path)
  if refused:
    with pytest.raises(cli.UserError, match=f'records training up to step {last_row} but its '
                                            'checkpoints/ holds none'):
      workdir_lib.Workdir(str(tmp_path)).check_before_training(config)
  else:
    workdir_lib.Workdir(str(tmp_path)).check_before_training(config)
  assert snapshot(tmp_path) == before


@pytest.mark.parametrize('unfinished_save, last_row, refused', [
    ('2.orbax-checkpoint-tmp-1765152000123456', 4, False),  # The first save, under way.
    ('4.orbax-checkpoint-tmp-1765152000123456', 4, True),  # A later save: the first is gone.
    ('2.orbax-checkpoint-tmp-1765152000123456', 5, True),  # Rows past where it would wait.
])
def test_a_run_killed_during_its_first_save_starts_over(
    bible_config, bible_tokenizer, tmp_path, unfinished_save, last_row, refused):
  """Saves are asynchronous: killed while the first one is written, a run has rows up to two
  intervals and no checkpoint, and nothing to lose by starting over."""
  config = conftest.tiny_config(bible_config.data_dir, checkpoint_every_steps=2)
  workdir_lib.Workdir(str(tmp_path)).start(config, bible_tokenizer)
  (tmp_path / workdir_lib.METRICS).write_text(
      ''.join(json.dumps({'step': s, 'train/loss': 1.0}) + '\n' for s in range(1, last_row + 1)))
  (tmp_path / workdir_lib.CHECKPOINTS / unfinished_save).mkdir(parents=True)
  before = snapshot(tmp_path)
  if refused:
    with pytest.raises(cli.UserError, match=f'records training up to step {last_row}'):
      workdir_lib.Workdir(str(tmp_path)).check_before_training(config)
  else:
    workdir_lib.Workdir(str(tmp_path)).check_before_training(config)
  assert snapshot(tmp_path) == before
