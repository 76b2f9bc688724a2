"""The study command end to end at tiny size: its report's table is read back from the runs."""

import json
import math
import os
import re
import signal

import pytest

import conftest
from transformer import study
from transformer import workdir as workdir_lib

TINY = {**conftest.TINY, 'num_train_steps': 4, 'warmup_steps': 2, 'eval_every_steps': 2,
        'diagnostics_every_steps': 2, 'num_eval_bleu_sentences': 4, 'eval_batch_size': 4,
        'model.max_len': 64}


def table_rows(report: str, section: str = '## The variants') -> dict[str, list[str]]:
  """{first cell: cells} of the first table after the heading `section`."""
  rows, lines = {}, report.split(section, 1)[1].splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('| '))
  for line in lines[start:]:
    if not line.startswith('|'):
      break
    cells = [c.strip() for c in line.strip('|').split('|')]
    if cells[0] != 'variant' and not set(cells[0]) <= {'-'}:
      rows[cells[0]] = cells
  return rows


def test_study_runs_resumes_and_reports_what_the_runs_wrote(bible_config, tmp_path, monkeypatch):
  # The test split is 1,500 verses; decoding 8 of them keeps the test to seconds.
  from transformer import datasets  # pylint: disable=g-import-not-at-top
  real_load_pairs = datasets.load_pairs
  monkeypatch.setattr(datasets, 'load_pairs',
                      lambda config, split: real_load_pairs(config, split)[:8]
                      if split == 'test' else real_load_pairs(config, split))
  overrides = {**TINY, 'data_dir': bible_config.data_dir}
  path = study.run_study('small', str(tmp_path), variants=['baseline', 'pre_ln'],
                         lr_grid=False, learner=False, overrides=overrides)
  with open(path) as f:
    report = f.read()
  rows = table_rows(report)
  assert set(rows) == {'baseline', 'pre_ln'}
  for name, cells in rows.items():
    run = workdir_lib.ExperimentDir(str(tmp_path)).run(name)
    metrics, result = run.metrics(), run.result()
    assert cells[1] == '1'
    assert float(cells[2]) == round(result['bleu'], 2)
    assert float(cells[4]) == round(result['chrf'], 2)
    evals = [r for r in metrics if 'eval/loss' in r]
    best = min(evals, key=lambda r: r['eval/loss'])
    assert cells[5] == f"{best['eval/loss']:.3f} ({best['step']})"
    assert float(cells[6]) == round(evals[0]['eval/loss'], 3)
    assert float(cells[7]) == round(evals[-1]['eval/loss'] - evals[-1]['eval/train_loss'], 3)
    assert int(cells[10].replace(',', '')) == next(
        r['params/count'] for r in metrics if 'params/count' in r)
    assert int(cells[9]) == 0
    assert [r['step'] for r in metrics if 'eval/bleu' in r] == [2, 4]
  assert result['bleu_signature'] in report
  for plot in re.findall(r'\]\((plots/[^)]+)\)', report):
    assert os.path.getsize(os.path.join(tmp_path, plot)) > 1000

  # Run again: every run is finished, so nothing trains and the report is the same.
  mtime = os.path.getmtime(os.path.join(tmp_path, 'baseline', 'seed_0', 'metrics.jsonl'))
  again = study.run_study('small', str(tmp_path), variants=['baseline', 'pre_ln'],
                          lr_grid=False, learner=False, overrides=overrides)
  assert os.path.getmtime(os.path.join(tmp_path, 'baseline', 'seed_0', 'metrics.jsonl')) == mtime
  with open(again) as f:
    assert table_rows(f.read()) == rows


def test_report_refuses_runs_of_two_code_versions(tmp_path):
  from transformer import cli, report  # pylint: disable=g-import-not-at-top
  for name, version in (('baseline', 'code-aaaa'), ('pre_ln', 'code-bbbb')):
    run_dir = tmp_path / name / 'seed_0'
    run_dir.mkdir(parents=True)
    (run_dir / workdir_lib.RESULT).write_text(json.dumps(
        {'code_version': version, 'diverged': False, 'bleu': 1.0}))
  with pytest.raises(cli.UserError, match='code-aaaa: 1 runs.*code-bbbb: 1 runs'):
    report.write_report(str(tmp_path), variants=['baseline', 'pre_ln'])


def test_report_refuses_runs_of_two_vocabularies_by_content_not_bytes(tmp_path):
  """The same vocabulary trained twice differs in bytes (sentencepiece records its temporary
  folder) and is one vocabulary; another size is another one, and is refused."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from transformer import cli, report  # pylint: disable=g-import-not-at-top
  text = tmp_path / 'text.txt'
  text.write_text(''.join(f'le mot {i} et la phrase {i * 7} du texte\n' for i in range(300)))
  runs = {'baseline': 40, 'pre_ln': 40, 'rms_norm': 41}
  for name, size in runs.items():
    run_dir = tmp_path / name / 'seed_0'
    run_dir.mkdir(parents=True)
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(run_dir / name),
                                   vocab_size=size, minloglevel=2)
    (run_dir / name).with_suffix('.model').rename(run_dir / 'vocabulary.model')
    (run_dir / workdir_lib.RESULT).write_text(json.dumps(
        {'code_version': 'code-aaaa', 'diverged': False, 'bleu': 1.0}))
  same = [tmp_path / name / 'seed_0' / 'vocabulary.model' for name in ('baseline', 'pre_ln')]
  assert same[0].read_bytes() != same[1].read_bytes()
  groups = report._group(workdir_lib.ExperimentDir(str(tmp_path)), ['baseline', 'pre_ln'])  # pylint: disable=protected-access
  assert len(report.check_one_vocabulary(groups)) == 12
  with pytest.raises(cli.UserError, match='different vocabularies') as refused:
    report.write_report(str(tmp_path), variants=list(runs))
  counts = {int(n): run_dir for _, n, run_dir in
            re.findall(r'(\w{12}): (\d) runs \(e\.g\. (\S+)\)', str(refused.value))}
  assert sorted(counts) == [1, 2] and 'rms_norm' in counts[1]


def test_a_finished_run_of_other_code_is_refused_not_skipped(bible_config, tmp_path):
  from transformer import cli  # pylint: disable=g-import-not-at-top
  (tmp_path / workdir_lib.RESULT).write_text(json.dumps(
      {'code_version': 'code-0000', 'num_train_steps': bible_config.num_train_steps}))
  with pytest.raises(cli.UserError, match='finished by code code-0000'):
    study.run_one(bible_config, str(tmp_path))


def test_a_run_stopped_by_sigterm_is_saved_not_finished(bible_config, tmp_path, monkeypatch):
  """SIGTERM after the step-2 checkpoint: no result file, so the next invocation resumes."""
  from transformer import checkpoints  # pylint: disable=g-import-not-at-top
  config = conftest.tiny_config(bible_config.data_dir, num_train_steps=4)
  real_save = checkpoints.Checkpointer.save

  def save_then_sigterm(self, step, *args):
    real_save(self, step, *args)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # The loop's handler sets its flag; no exit.

  monkeypatch.setattr(checkpoints.Checkpointer, 'save', save_then_sigterm)
  workdir = str(tmp_path / 'run')
  with pytest.raises(study.RunInterrupted, match='stopped at step 2 of 4'):
    study.run_one(config, workdir)
  assert not os.path.exists(os.path.join(workdir, workdir_lib.RESULT))
  assert workdir_lib.Workdir(workdir).saved_steps() == [2]


def test_run_configs_regime_seeds_learner_runs_and_grid():
  runs = study.run_configs('small', seeds=3, overrides={'eval_batch_size': 8})
  variants = [f'{name}/seed_{s}' for s in range(3) for name in study.STUDY_VARIANTS]
  grid = [k for k in runs if k.startswith('lr_grid/')]
  assert [k for k in runs if not k.startswith(('lr_grid/', 'learner/'))] == variants
  assert list(runs).index('learner/all_pairs/seed_0') < list(runs).index('baseline/seed_1')
  for name in variants:
    config = runs[name]
    assert config.seed == int(name[-1]) and config.eval_batch_size == 8
    for field, value in study.REGIMES['small'].items():
      assert config[field] == value  # Every variant: the same data and budget in steps.
  assert runs['learner/no_positions/seed_0'].model.positions == 'none'
  assert runs['learner/all_pairs/seed_0'].max_train_pairs == 0
  assert len(grid) == len(study.LR_GRID_VARIANTS) * len(study.LR_GRID_FACTORS) * 2
  rates = {}
  for name in grid:
    config = runs[name]
    variant = name.split('/')[1].split('_lr')[0]
    assert config.num_train_steps == study.REGIMES['small']['num_train_steps'] // 4
    assert config.eval_every_steps == config.num_train_steps  # One evaluation, at the end.
    assert (config.warmup_steps == 0) == name.endswith('_no_warmup/seed_0')
    rates.setdefault(variant, set()).add(config.learning_rate)
  for variant, found in rates.items():
    assert max(found) / min(found) >= 8 and len(found) >= 4, variant
  # Full scale trains on every pair already: its all-pairs run would repeat the baseline.
  assert not any(k.startswith('learner/all_pairs') for k in study.run_configs('full'))
