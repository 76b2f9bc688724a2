"""The study command end to end at tiny size: its report's table is read back from the runs."""

import json
import math
import os
import re

import pytest

import conftest
from transformer import metrics as metrics_lib
from transformer import study

TINY = {**conftest.TINY, 'num_train_steps': 4, 'warmup_steps': 2, 'eval_every_steps': 2,
        'diagnostics_every_steps': 2, 'num_eval_bleu_sentences': 4, 'eval_batch_size': 4,
        'model.max_len': 64}


def table_rows(report: str) -> dict[str, list[str]]:
  rows = {}
  for line in report.splitlines():
    cells = [c.strip() for c in line.strip('|').split('|')]
    if line.startswith('| ') and cells[0] not in ('variant',) and not set(cells[0]) <= {'-'}:
      rows[cells[0]] = cells
  return rows


def test_study_runs_resumes_and_reports_what_the_runs_wrote(bible_config, tmp_path, monkeypatch):
  # The test split is 1,500 verses; decoding 8 of them keeps the test to seconds.
  from transformer import input_pipeline  # pylint: disable=g-import-not-at-top
  real_load_pairs = input_pipeline.load_pairs
  monkeypatch.setattr(input_pipeline, 'load_pairs',
                      lambda config, split: real_load_pairs(config, split)[:8]
                      if split == 'test' else real_load_pairs(config, split))
  overrides = {**TINY, 'data_dir': bible_config.data_dir}
  path = study.run_study('small', str(tmp_path), variants=['baseline', 'pre_ln'],
                         ablations=False, overrides=overrides)
  with open(path) as f:
    report = f.read()
  rows = table_rows(report)
  assert set(rows) == {'baseline', 'pre_ln'}
  for name, cells in rows.items():
    run_dir = os.path.join(tmp_path, name, 'seed_0')
    metrics = metrics_lib.read_metrics(run_dir)
    with open(os.path.join(run_dir, study.RESULT_FILE)) as f:
      result = json.load(f)
    assert float(cells[1]) == round(result['bleu'], 2)
    assert float(cells[2]) == round(result['chrf'], 2)
    eval_losses = [r['eval/loss'] for r in metrics if 'eval/loss' in r]
    assert math.isclose(float(cells[3]), round(min(eval_losses), 2))
    assert math.isclose(float(cells[4]), round(eval_losses[0], 2))
    assert int(cells[7].replace(',', '')) == next(
        r['params/count'] for r in metrics if 'params/count' in r)
    assert int(cells[6]) == 0
    assert [r['step'] for r in metrics if 'eval/bleu' in r] == [2, 4]
  assert result['bleu_signature'] in report
  for plot in re.findall(r'\]\((plots/[^)]+)\)', report):
    assert os.path.getsize(os.path.join(tmp_path, plot)) > 1000

  # Run again: every run is finished, so nothing trains and the report is the same.
  mtime = os.path.getmtime(os.path.join(tmp_path, 'baseline', 'seed_0', 'metrics.jsonl'))
  again = study.run_study('small', str(tmp_path), variants=['baseline', 'pre_ln'],
                          ablations=False, overrides=overrides)
  assert os.path.getmtime(os.path.join(tmp_path, 'baseline', 'seed_0', 'metrics.jsonl')) == mtime
  with open(again) as f:
    assert table_rows(f.read()) == rows


def test_report_refuses_runs_of_two_code_versions(tmp_path):
  from transformer import cli, report  # pylint: disable=g-import-not-at-top
  for name, version in (('baseline', 'code-aaaa'), ('pre_ln', 'code-bbbb')):
    run_dir = tmp_path / name / 'seed_0'
    run_dir.mkdir(parents=True)
    (run_dir / study.RESULT_FILE).write_text(json.dumps(
        {'code_version': version, 'diverged': False, 'bleu': 1.0}))
  with pytest.raises(cli.UserError, match='code-aaaa: 1 runs.*code-bbbb: 1 runs'):
    report.write_report(str(tmp_path), variants=['baseline', 'pre_ln'])


def test_a_finished_run_of_other_code_is_refused_not_skipped(bible_config, tmp_path):
  from transformer import cli  # pylint: disable=g-import-not-at-top
  (tmp_path / study.RESULT_FILE).write_text(json.dumps(
      {'code_version': 'code-0000', 'num_train_steps': bible_config.num_train_steps}))
  with pytest.raises(cli.UserError, match='finished by code code-0000'):
    study.run_one(bible_config, str(tmp_path))
