"""The catalog of bad inputs to training: each fails early, says what is wrong, loses nothing.

Entries tested elsewhere: a missing IWSLT archive (test_datasets.py,
test_iwslt_missing_archive_says_what_to_put_where), a vocabulary of another corpus
(test_tokenizer.py, test_model_for_other_data_is_an_error), a single NaN step skipped and
counted (test_training.py, test_nonfinite_step_is_skipped_and_counted), the decode-side
entries, empty, non-UTF-8 or over-long input (test_inference.py), and the run folder's own
checks (test_workdir.py).
"""

import glob
import logging
import os
import math
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest

from transformer import cli
from transformer import config_checks
from transformer import config_utils
from transformer import inference
from transformer import metrics as metrics_lib
from transformer import sharding
from transformer import steps
from transformer import training
from transformer import variants
from transformer import workdir as workdir_lib
from transformer.datasets import iwslt2017_fr_en

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
# A 1+1-layer, 16-wide model, a checkpoint every 2 steps, all kept: seconds a run.
TINY = {**conftest.TINY, 'num_train_steps': STEPS, 'max_checkpoints_to_keep': 10}


def tiny(data_dir, **overrides):
  return conftest.tiny_config(data_dir, **{**TINY, **overrides})


def train_command(workdir, data_dir, *extra):
  return [sys.executable, os.path.join(ROOT, 'train.py'),
          f'--config={ROOT}/configs/baseline.py:small', f'--workdir={workdir}',
          f'--config.data_dir={data_dir}'] + [
              f'--config.{k}={v}' for k, v in TINY.items()] + list(extra)


def restore(workdir, step=None):
  """(step, raw TrainState) of a checkpoint, the latest by default."""
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state',),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    step = manager.latest_step() if step is None else step
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, state.state


def metric_rows(workdir):
  """metrics.jsonl less the wall-clock keys, which no two runs share."""
  rows = [{k: v for k, v in row.items() if not k.startswith(metrics_lib.WALL_CLOCK_PREFIX)}
          for row in workdir_lib.Workdir(workdir).metrics()]
  return [row for row in rows if len(row) > 1]


def snapshot(workdir):
  """Every file under `workdir` with its bytes: to show that a failed start changed nothing."""
  files = {}
  for path in sorted(glob.glob(os.path.join(workdir, '**'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        files[os.path.relpath(path, workdir)] = f.read()
  return files


def assert_same_run(workdir_a, workdir_b):
  step_a, state_a = restore(workdir_a)
  step_b, state_b = restore(workdir_b)
  assert step_a == step_b == STEPS
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)  # Bit for bit.
  assert metric_rows(workdir_a) == metric_rows(workdir_b)


@pytest.fixture(scope='module')
def unbroken(bible_config, bible_tokenizer, tmp_path_factory):
  """A tiny run of STEPS steps, never interrupted: the reference for resumed ones."""
  del bible_tokenizer  # Trained into data_dir before any run needs it.
  workdir = os.fspath(tmp_path_factory.mktemp('unbroken'))
  training.train_and_evaluate(tiny(bible_config.data_dir), workdir)
  return workdir


def test_unknown_config_field_is_named_before_anything_runs(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'train.py'),
       f'--config={ROOT}/configs/baseline.py:small', f'--workdir={workdir}',
       '--config.model.emb_dimm=3'],
      capture_output=True, text=True, timeout=120, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode != 0
  assert ("--config.model.emb_dimm=3: the config has no field 'emb_dimm' (did you mean "
          "'emb_dim'?)") in result.stderr
  assert not workdir.exists()


def test_unknown_norm_fails_before_the_workdir_is_claimed(bible_config, tmp_path):
  """A typo must not leave a config.json that would refuse the corrected rerun."""
  config = tiny(bible_config.data_dir, **{'model.norm': 'group_norm'})
  with pytest.raises(cli.UserError, match=r"config\.model\.norm must be one of .*'layer_norm'.*, "
                     "got 'group_norm'"):
    training.train_and_evaluate(config, os.fspath(tmp_path))
  assert not (tmp_path / 'config.json').exists()


def test_unknown_variant_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown variant 'pre_norm'; configs/ has: .*pre_ln"):
    variants.get_variant('pre_norm', 'small')


def test_unwritable_workdir_fails_before_training(bible_config, tmp_path, monkeypatch):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  monkeypatch.setattr(training.input_pipeline, 'prepare', lambda config: pytest.fail(
      'reached the data pipeline'))
  with pytest.raises(cli.UserError, match=r"Cannot write to workdir '.*a_file/run'"):
    training.train_and_evaluate(tiny(bible_config.data_dir), os.fspath(blocker / 'run'))


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes through chmod 500')
def test_read_only_workdir_fails_before_training(bible_config, tmp_path, monkeypatch):
  tmp_path.chmod(0o500)
  monkeypatch.setattr(training.input_pipeline, 'prepare', lambda config: pytest.fail(
      'reached the data pipeline'))
  try:
    with pytest.raises(cli.UserError, match='Cannot write to workdir'):
      training.train_and_evaluate(tiny(bible_config.data_dir), os.fspath(tmp_path))
  finally:
    tmp_path.chmod(0o700)


def test_checkpoint_of_another_model_shape_is_refused_and_kept(unbroken, tmp_path):
  workdir = os.fspath(tmp_path / 'run')
  shutil.copytree(unbroken, workdir)
  before = snapshot(workdir)
  config = tiny(workdir_lib.Workdir(workdir).config().data_dir, **{'model.emb_dim': 32})
  with pytest.raises(ValueError, match=r'model\.emb_dim: 16 in the workdir, 32 now'):
    training.train_and_evaluate(config, workdir)
  assert snapshot(workdir) == before


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(unbroken, tmp_path, caplog):
  """A truncated array file in the newest checkpoint: resume from the one before, warn."""
  workdir = os.fspath(tmp_path / 'run')
  shutil.copytree(unbroken, workdir)
  for path in glob.glob(os.path.join(workdir, 'checkpoints', str(STEPS), 'state', 'd', '*')):
    os.truncate(path, 10)
  config = workdir_lib.Workdir(workdir).config()
  with caplog.at_level(logging.WARNING):
    training.train_and_evaluate(config, workdir)
  warnings = '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert f'The checkpoint of step {STEPS} cannot be restored (ValueError: ' in warnings
  assert 'is not valid for value of size 10' in warnings  # What was wrong, as tensorstore says.
  assert os.path.isdir(os.path.join(workdir, 'corrupt_checkpoints', str(STEPS)))
  assert_same_run(unbroken, workdir)  # Steps STEPS-1 and STEPS retrained from STEPS-2.


def test_unreadable_checkpoints_are_an_error_that_moves_nothing(unbroken, tmp_path):
  workdir = os.fspath(tmp_path / 'run')
  shutil.copytree(unbroken, workdir)
  for path in glob.glob(os.path.join(workdir, 'checkpoints', '*', 'data', '*.json')):
    os.remove(path)
  with pytest.raises(cli.UserError, match=r'No checkpoint .* can be restored:\n  step 8: .*'
                     r'process_0-of-1\.json does not exist'):
    training.train_and_evaluate(workdir_lib.Workdir(workdir).config(), workdir)
  assert not os.path.exists(os.path.join(workdir, 'corrupt_checkpoints'))


def test_nan_losses_stop_the_run_with_the_last_checkpoint_intact(bible_config, tmp_path,
                                                                  monkeypatch):
  """Steps 3, 4, 5 have a NaN loss: skipped and counted, then a stop at the limit of 3."""
  poison = -7  # No token has this id; a batch starting with it gets a NaN loss.
  real_loss_sum, real_shard_batch = steps.loss_sum, sharding.shard_batch
  batches = []

  def poisoned_loss_sum(params, batch_stats, batch, rng, **kwargs):
    loss, updates = real_loss_sum(params, batch_stats, batch, rng, **kwargs)
    return jax.numpy.where(batch['inputs'][0, 0] == poison, jax.numpy.nan, loss), updates

  def shard_batch(batch, mesh):
    batches.append(batch)
    if len(batches) >= 3:
      batch = {**batch, 'inputs': batch['inputs'].copy()}
      batch['inputs'][0, 0] = poison
    return real_shard_batch(batch, mesh)

  monkeypatch.setattr(steps, 'loss_sum', poisoned_loss_sum)
  monkeypatch.setattr(sharding, 'shard_batch', shard_batch)
  config = tiny(bible_config.data_dir, max_nonfinite_steps=3)
  workdir = os.fspath(tmp_path)
  with pytest.raises(training.NonFiniteLossError,
                     match=r'3 consecutive steps .* max_nonfinite_steps=3.* checkpoint \(step 4\) '
                     'is intact'):
    training.train_and_evaluate(config, workdir)
  losses = {row['step']: row['train/loss'] for row in metric_rows(workdir) if 'train/loss' in row}
  assert sorted(losses) == [1, 2, 3, 4, 5]
  assert np.isfinite([losses[1], losses[2]]).all() and np.isnan([losses[3], losses[4],
                                                                  losses[5]]).all()
  step, state = restore(workdir)
  _, good = restore(workdir, 2)
  assert step == 4
  assert (int(state['nonfinite_total']), int(state['nonfinite_streak'])) == (2, 2)
  jax.tree.map(np.testing.assert_array_equal, state['params'], good['params'])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(unbroken, tmp_path):
  workdir = os.fspath(tmp_path / 'run')
  data_dir = workdir_lib.Workdir(unbroken).config().data_dir
  # Checkpoints only at the end: the one found after SIGTERM is the handler's.
  log_path = tmp_path / 'train.log'
  with open(log_path, 'w') as log:  # Not a pipe: orbax logs enough to fill one and block.
    process = subprocess.Popen(
        train_command(workdir, data_dir, f'--config.checkpoint_every_steps={STEPS}'),
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  deadline = time.monotonic() + 300
  while process.poll() is None and time.monotonic() < deadline:
    if any('train/loss' in row for row in workdir_lib.Workdir(workdir).metrics()):
      process.send_signal(signal.SIGTERM)
      break
    time.sleep(0.005)
  process.wait(timeout=300)
  log = log_path.read_text()
  assert process.returncode == 0, log[-3000:]
  assert 'SIGTERM received: saving a checkpoint and exiting.' in log
  step, _ = restore(workdir)
  assert 0 < step < STEPS  # Stopped mid-run ...
  assert max(row['step'] for row in metric_rows(workdir)) == step  # ... with its rows written.
  training.train_and_evaluate(workdir_lib.Workdir(workdir).config(), workdir)
  assert_same_run(unbroken, workdir)


# --- Bad inputs: each refused before any write, the workdir unchanged. ---


def tree(workdir):
  """Every path under `workdir` (folders too) and each file's bytes."""
  if not os.path.exists(workdir):
    return None
  return {os.path.relpath(p, workdir): snapshot(workdir).get(os.path.relpath(p, workdir))
          for p in glob.glob(os.path.join(workdir, '**'), recursive=True)}


def assert_refused(call, match, workdir):
  before = tree(workdir)
  with pytest.raises(cli.UserError, match=match):
    call()
  assert tree(workdir) == before


def _bad_value(field, value):
  """A value of the field's type that its rule rejects."""
  ok, _ = config_checks.RULES[field]
  for candidate in (-1, 2**32, 'nope', '/dev/null', -1.0, 1.0, float('nan')):
    if type(candidate) is type(value) and not ok(candidate):
      return candidate
  raise AssertionError(f'no bad value found for {field}')


def test_every_field_of_every_variant_has_a_rule():
  for name in variants.variant_names():
    for scale in ('full', 'small'):
      fields = config_utils.flatten(variants.get_variant(name, scale).to_dict())
      assert sorted(set(fields) - set(config_checks.RULES)) == [], name


@pytest.mark.parametrize('field', sorted(config_checks.RULES))
def test_a_bad_value_of_each_field_is_named(bible_config, field):
  config = tiny(bible_config.data_dir)
  value = config_utils.flatten(config_utils.to_dict(config))[field]
  bad = _bad_value(field, value)
  config_utils.apply_overrides(config, {field: bad})
  # model.vocab_size is a reference to vocab_size: setting one sets both.
  name = 'vocab_size' if field.endswith('vocab_size') else field
  with pytest.raises(cli.UserError, match=rf'config\.{re.escape(name)} must be .*, got '
                     rf'{re.escape(repr(bad))}'):
    config_checks.validate(config)


@pytest.mark.parametrize('overrides, match', [
    ({'lr_schedule': 'step'}, r"config\.lr_schedule must be one of 'rsqrt', 'cosine', 'linear'"),
    ({'max_length': 300}, r'config\.max_length=300 .* exceeds config\.model\.max_len=256'),
    ({'model.num_heads': 3}, r'qkv_dim must divide by num_heads'),
    ({'decode_length_ratio': 0.0, 'decode_length_offset': 0}, r'no output token'),
])
def test_config_combinations_that_cannot_work(bible_config, overrides, match):
  config = tiny(bible_config.data_dir, **overrides)
  with pytest.raises(cli.UserError, match=match):
    config_checks.validate(config)


@pytest.fixture
def trained(unbroken, tmp_path):
  """A copy of the unbroken run (steps 2..8 checkpointed, metrics to step 8)."""
  workdir = os.fspath(tmp_path / 'run')
  shutil.copytree(unbroken, workdir)
  return workdir


def test_no_checkpoint_kept_is_refused_on_a_resume(trained):
  config = workdir_lib.Workdir(trained).config()
  config.max_checkpoints_to_keep = 0
  assert_refused(lambda: training.train_and_evaluate(config, trained),
                 r'config\.max_checkpoints_to_keep must be an integer >= 1, got 0', trained)


def test_deleted_checkpoints_do_not_restart_and_rewrite_history(trained):
  shutil.rmtree(os.path.join(trained, 'checkpoints'))
  assert_refused(lambda: training.train_and_evaluate(
      workdir_lib.Workdir(trained).config(), trained),
      r'records training up to step 8 but its checkpoints/ holds none', trained)


def test_fewer_steps_than_trained_is_refused(trained):
  config = workdir_lib.Workdir(trained).config()
  config.num_train_steps = 4
  assert_refused(lambda: training.train_and_evaluate(config, trained),
                 r'trained to step 8, past num_train_steps=4.*num_train_steps=8 or more', trained)


@pytest.mark.parametrize('variant', ['baseline', 'pre_ln'])
def test_checkpoints_without_config_json_are_claimed_by_no_config(trained, variant):
  config = workdir_lib.Workdir(trained).config()
  if variant != 'baseline':
    config.model.norm_position = 'pre'
  os.remove(os.path.join(trained, 'config.json'))
  assert_refused(lambda: training.train_and_evaluate(config, trained),
                 r'holds .*checkpoints, metrics\.jsonl.* but no config\.json', trained)


def test_malformed_metrics_row_is_named_before_any_write(trained):
  path = os.path.join(trained, workdir_lib.METRICS)
  with open(path) as f:
    lines = f.readlines()
  lines[2] = '{"step": 1, oops\n'
  with open(path, 'w') as f:
    f.writelines(lines)
  assert_refused(lambda: training.train_and_evaluate(
      workdir_lib.Workdir(trained).config(), trained),
      r'metrics\.jsonl:3 is not a JSON row', trained)


def test_vocabulary_larger_than_the_corpus_says_the_limit(bible_config, tmp_path):
  workdir = os.fspath(tmp_path / 'run')
  config = tiny(bible_config.data_dir, vocab_size=200_000)
  assert_refused(lambda: training.train_and_evaluate(config, workdir),
                 r'config\.vocab_size=200000 is more pieces than the training text holds; '
                 r'give --config\.vocab_size=\d+ or less', workdir)
  assert not glob.glob(os.path.join(bible_config.data_dir, '**', 'spm_200000*'), recursive=True)


def test_iwslt_without_archive_offline_is_refused_before_any_work(bible_config, tmp_path,
                                                                  monkeypatch):
  monkeypatch.setattr(iwslt2017_fr_en, 'DOWNLOAD_URL', 'https://127.0.0.1/fr-en.zip')
  config = tiny(os.fspath(tmp_path / 'tfds'), dataset_name='iwslt2017_fr_en',
                manual_dir=os.fspath(tmp_path / 'manual'))
  workdir = os.fspath(tmp_path / 'run')
  assert_refused(lambda: training.train_and_evaluate(config, workdir),
                 r"archive is not in '.*manual' and 127\.0\.0\.1 cannot be reached", workdir)
  assert not (tmp_path / 'manual').exists()


@pytest.mark.parametrize('kwargs, match', [
    (dict(split='train2'), r"bible_fr_en has no split 'train2'"),
    (dict(split='test', checkpoint='9'), r'--checkpoint=9: .* has no step 9'),
    (dict(split='test', checkpoint='last'), r"--checkpoint=last: give 'best', 'latest'"),
    (dict(input_path='missing.fr'), r'--input=missing\.fr: no such file'),
    (dict(split='test', reference_paths=['missing.en']), r'--reference=missing\.en: no such'),
    (dict(split='test', output_path='no/such/folder/out.en'), r'the folder .* does not exist'),
    (dict(split='test', beam_size=0), r'--beam_size=0 must be >= 1'),
    (dict(split='test', nbest=9), r'nbest=9 must be in \[0, beam_size=4\]'),
    (dict(split='test', max_decode_len=0), r'--max_decode_len=0 must be >= 1'),
    (dict(split='test', length_penalty=-1.0), r'--length_penalty=-1\.0 must be >= 0'),
])
def test_decode_mistakes_are_named_and_write_nothing(trained, kwargs, match, monkeypatch):
  monkeypatch.chdir(trained)
  assert_refused(lambda: inference.decode(trained, **kwargs), match, trained)


@pytest.mark.parametrize('target', ['input', 'reference'])
def test_decode_output_onto_an_input_is_refused(trained, tmp_path, target):
  source = tmp_path / 'source.fr'
  source.write_text('Au commencement.\n')
  reference = tmp_path / 'reference.en'
  reference.write_text('In the beginning.\n')
  output = os.fspath(source if target == 'input' else reference)
  before = tree(os.fspath(tmp_path))
  with pytest.raises(cli.UserError, match=rf'--output=.* is the --{target} file'):
    inference.decode(trained, input_path=os.fspath(source), output_path=output,
                     reference_paths=[os.fspath(reference)])
  assert tree(os.fspath(tmp_path)) == before


def test_decode_of_a_folder_that_is_no_workdir(tmp_path):
  with pytest.raises(cli.UserError, match='is not a training workdir'):
    inference.decode(os.fspath(tmp_path), split='test')


def test_ctrl_c_saves_like_sigterm_and_says_how_to_resume(unbroken, tmp_path, monkeypatch,
                                                         caplog):
  workdir = os.fspath(tmp_path / 'run')
  real_shard_batch, batches = sharding.shard_batch, []
  handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job.

  def shard_batch(batch, mesh):
    batches.append(batch)
    if len(batches) == 3:
      os.kill(os.getpid(), signal.SIGINT)
    return real_shard_batch(batch, mesh)

  monkeypatch.setattr(sharding, 'shard_batch', shard_batch)
  config = workdir_lib.Workdir(unbroken).config()
  config.checkpoint_every_steps = STEPS
  with caplog.at_level(logging.WARNING):
    training.train_and_evaluate(config, workdir)
  step, _ = restore(workdir)
  assert 0 < step < STEPS
  assert f'Saved step {step} of {STEPS} in {workdir}; run the same command again' in caplog.text
  assert signal.getsignal(signal.SIGINT) is handler_before  # Restored.
  monkeypatch.setattr(sharding, 'shard_batch', real_shard_batch)
  training.train_and_evaluate(config, workdir)
  assert_same_run(unbroken, workdir)


def run_script(*args, stdin=None):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180,
                        check=False, input=stdin, cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_cli_bad_flag_value_is_one_line_without_traceback(tmp_path):
  result = run_script('train.py', '--config=configs/baseline.py:small',
                      f'--workdir={tmp_path / "run"}', '--config.batch_size=abc')
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      "train.py: error: Flags parsing error: flag --config.batch_size=abc: invalid literal for "
      "int() with base 10: 'abc'", 'Pass --helpshort or --helpfull to see help on flags.']
  assert not (tmp_path / 'run').exists()


def test_cli_decode_refuses_to_overwrite_its_input_and_verbose_shows_the_traceback(trained,
                                                                                    tmp_path):
  source = tmp_path / 'source.fr'
  source.write_text('Au commencement.\n')
  args = ['decode.py', f'--workdir={trained}', f'--input={source}', f'--output={source}']
  result = run_script(*args)
  assert result.returncode == 1
  assert 'is the --input file: writing would destroy it' in result.stderr
  assert 'Traceback' not in result.stderr and len(result.stderr.splitlines()) <= 2
  assert source.read_text() == 'Au commencement.\n'
  verbose = run_script(*args, '--verbose')
  assert verbose.returncode == 1 and 'Traceback (most recent call last)' in verbose.stderr


def assert_one_line_error(result, script: str, match: str):
  """A designed stop: exit status 1, `<script>: error: ...` matching, no traceback."""
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith(f'{script}: error: ')]
  assert len(errors) == 1 and re.search(match, errors[0]), result.stderr[-2000:]


@pytest.mark.parametrize('name', ['config.json', 'vocabulary.model'])
def test_decode_output_onto_a_run_file_is_refused(trained, tmp_path, name):
  source = tmp_path / 'source.fr'
  source.write_text('Au commencement.\n')
  before = snapshot(trained)
  result = run_script('decode.py', f'--workdir={trained}', f'--input={source}',
                      f'--output={os.path.join(trained, name)}')
  assert_one_line_error(result, 'decode.py', f'--output=.*{name} is a file of the run in')
  assert snapshot(trained) == before


@pytest.mark.parametrize('owned', [('vocabulary.model', 'plots/train_loss.png'),
                                   ('REPORT.md', 'plots/eval_loss.png')],
                         ids=['a_run_s_files', 'a_study_folder'])
def test_train_into_a_folder_with_run_files_but_no_config_is_refused(bible_config, tmp_path,
                                                                     owned):
  """The user's own files under a run's names are not overwritten (a study's folder too)."""
  folder = tmp_path / 'mine'
  for name in owned:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b'the user\'s own ' + name.encode())
  before = snapshot(folder)
  result = run_script(*train_command(folder, bible_config.data_dir)[1:])
  assert_one_line_error(result, 'train.py', r'holds .*plots.* but no config\.json')
  assert snapshot(folder) == before


def test_a_huge_learning_rate_stops_at_the_limit_and_decoding_says_why(bible_config, tmp_path):
  """lr 1e10 without warm-up: the NaN/Inf limit (2) is checked every step, the stop is one
  line, no checkpoint holds NaN parameters, and decoding the last one says it cannot."""
  workdir = tmp_path / 'run'
  result = run_script(*train_command(workdir, bible_config.data_dir,
                                     '--config.learning_rate=1e10', '--config.warmup_steps=0',
                                     '--config.max_nonfinite_steps=2')[1:])
  assert_one_line_error(result, 'train.py', r'2 consecutive steps had a NaN/Inf loss or '
                        r'gradient \(limit max_nonfinite_steps=2\), the last at step \d')
  rows = [row for row in metric_rows(os.fspath(workdir)) if 'train/loss' in row]
  nonfinite = [row['step'] for row in rows if not math.isfinite(row['train/loss'])]
  assert len(nonfinite) == 2 and len(rows) < STEPS  # Stopped at the limit, not at a log line.
  for step in workdir_lib.Workdir(os.fspath(workdir)).saved_steps():
    params = restore(os.fspath(workdir), step)[1]['params']
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
  source = tmp_path / 'source.fr'
  source.write_text('Au commencement, Dieu créa les cieux et la terre.\n')
  decoded = run_script('decode.py', f'--workdir={workdir}', f'--input={source}',
                       '--checkpoint=latest')
  assert_one_line_error(decoded, 'decode.py', r'scores NaN or -inf: these parameters do not '
                        'translate')


@pytest.mark.parametrize('flag', ['--length_penalty=nan', '--beam_size=0', '--nbest=5'])
def test_decode_flags_are_checked_before_the_checkpoint_loads(trained, tmp_path, flag,
                                                              monkeypatch):
  source = tmp_path / 'source.fr'
  source.write_text('Au commencement.\n')
  result = run_script('decode.py', f'--workdir={trained}', f'--input={source}', flag)
  name = flag.split('=')[0]
  assert_one_line_error(result, 'decode.py', re.escape(name))


def test_decode_with_stdin_closed_is_one_line(trained):
  result = subprocess.run(f'{sys.executable} decode.py --workdir={trained} --input=- <&-',
                          shell=True, capture_output=True, text=True, timeout=180, cwd=ROOT)
  assert_one_line_error(result, 'decode.py', r'--input=-: there is no standard input')


def test_study_names_an_unknown_config_field_in_one_line(tmp_path):
  result = run_script('study.py', '--scale=small', f'--experiment_dir={tmp_path / "study"}',
                      '--config.bogus=1')
  assert_one_line_error(result, 'study.py', r"--config.bogus=1: the config has no field "
                        r"'bogus'")
  assert not (tmp_path / 'study').exists()


def test_decode_of_an_unparsable_config_json_is_one_line(trained, tmp_path):
  with open(os.path.join(trained, 'config.json'), 'a') as f:
    f.write('{')
  before = snapshot(trained)
  source = tmp_path / 'source.fr'
  source.write_text('Au commencement.\n')
  result = run_script('decode.py', f'--workdir={trained}', f'--input={source}')
  assert_one_line_error(result, 'decode.py', r'config\.json cannot be read')
  assert snapshot(trained) == before


def test_a_finished_run_says_so_and_rewrites_nothing(trained):
  files = lambda: {path: os.path.getmtime(path) for path in glob.glob(
      os.path.join(trained, '**'), recursive=True) if os.path.isfile(path)}
  before, mtimes = snapshot(trained), files()
  result = run_script(*train_command(trained, workdir_lib.Workdir(trained).config().data_dir)[1:])
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'is already trained to step {STEPS} of {STEPS}' in result.stderr
  assert snapshot(trained) == before
  assert files() == mtimes  # Not even rewritten with the same bytes: no plot is redrawn.
