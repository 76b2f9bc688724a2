"""The study command end to end at tiny size: its report's table is read back from the runs."""

import json
import os
import re
import shutil
import signal
import time
import types

import pytest

import conftest
from transformer import cli
from transformer import study
from transformer import study_plan
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
  plan = study.Study('small', str(tmp_path), variants=['baseline', 'pre_ln'], seeds=1,
                     more_seeds=1, lr_grid=False, learner=False, reruns=False,
                     overrides={**TINY, 'data_dir': bible_config.data_dir})
  path = study.run_study(plan)
  with open(path) as f:
    report = f.read()
  rows = table_rows(report)
  assert set(rows) == {'baseline', 'pre_ln'}
  for name, cells in rows.items():
    run = workdir_lib.ExperimentDir(str(tmp_path)).run(name)
    metrics, result = run.metrics(), run.result()
    assert cells[1] == '1'
    assert float(cells[2]) == pytest.approx(run.config().learning_rate)
    assert float(cells[3].split(' [')[0]) == round(result['bleu'], 2)
    assert float(cells[6]) == round(result['chrf'], 2)
    assert int(cells[7].replace(',', '')) == next(
        r['params/count'] for r in metrics if 'params/count' in r)
    assert [r['step'] for r in metrics if 'eval/bleu' in r] == [2, 4]
  assert result['bleu_signature'] in report
  for plot in re.findall(r'\]\((plots/[^)]+)\)', report):
    assert os.path.getsize(os.path.join(tmp_path, plot)) > 1000

  # Run again: every run is finished, so nothing trains and the report is the same.
  mtime = os.path.getmtime(os.path.join(tmp_path, 'baseline', 'seed_0', 'metrics.jsonl'))
  again = study.run_study(plan)
  assert os.path.getmtime(os.path.join(tmp_path, 'baseline', 'seed_0', 'metrics.jsonl')) == mtime
  with open(again) as f:
    assert table_rows(f.read()) == rows

  # A clone of the study holds its finished runs without their checkpoints (git ignores
  # them): they are still finished, and skipped. A finished run of another experiment in the
  # same folder is refused, not taken for this one's.
  for name in rows:
    for folder in (workdir_lib.CHECKPOINTS, workdir_lib.BEST):
      shutil.rmtree(os.path.join(tmp_path, name, 'seed_0', folder))
  study.run_study(plan)
  assert os.path.getmtime(os.path.join(tmp_path, 'baseline', 'seed_0', 'metrics.jsonl')) == mtime
  other = study.Study('small', str(tmp_path), variants=['baseline'], seeds=1, more_seeds=1,
                      lr_grid=False, learner=False, reruns=False,
                      overrides={**plan.overrides, 'adam_b2': 0.99})
  with pytest.raises(cli.UserError, match='finished run of another experiment.*adam_b2'):
    study.run_study(other)

  # Once the training code has moved on, the study refuses to go on with these runs, and
  # --report still writes their report; a study with a run left to train gets none.
  from transformer import provenance  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(provenance, 'code_version', lambda: 'code-ffffffffffffffff')
  with pytest.raises(cli.UserError, match='finished by code'):
    study.run_study(plan)
  with open(study.report_finished(plan)) as f:
    assert table_rows(f.read()) == rows
  assert os.path.getmtime(os.path.join(tmp_path, 'baseline', 'seed_0', 'metrics.jsonl')) == mtime
  bigger = study.Study('small', str(tmp_path), variants=['baseline', 'pre_ln', 'rms_norm'],
                       seeds=1, more_seeds=1, lr_grid=False, learner=False, reruns=False,
                       overrides=plan.overrides)
  with pytest.raises(cli.UserError, match=r'1 runs of the study are not finished \(rms_norm'):
    study.report_finished(bigger)


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
  from transformer import cli, report, run_records  # pylint: disable=g-import-not-at-top
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
  groups = run_records.group(workdir_lib.ExperimentDir(str(tmp_path)), ['baseline', 'pre_ln'])
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


def test_planned_runs_regime_grid_seeds_learner_and_reruns():
  plan = study.Study('small', seeds=3, overrides={'eval_batch_size': 8})
  runs = plan.planned()
  variants = [f'{name}/seed_{s}' for s in range(3) for name in study_plan.STUDY_VARIANTS]
  grid = [k for k in runs if k.startswith('lr_grid/')]
  assert [k for k in runs if not k.startswith(('lr_grid/', 'learner/', 'rerun/'))] == variants
  assert list(runs)[:len(grid)] == grid  # The grid first: it sets the seeds' rates.
  for name in variants:
    config = runs[name]
    assert config.seed == int(name[-1]) and config.eval_batch_size == 8
    for field, value in study_plan.REGIMES['small'].items():
      assert config[field] == value  # Every variant: the same data, budget and stopping rule.
  assert runs['learner/no_positions/seed_0'].model.positions == 'none'
  for variant, seed in study_plan.RERUNS:
    rerun = runs[f'rerun/{variant}/seed_{seed}']
    assert rerun.to_dict() == runs[f'{variant}/seed_{seed}'].to_dict()
  assert len(grid) == len(study_plan.NORM_VARIANTS) * len(study_plan.LR_FACTORS)
  for name in grid:
    config, variant = runs[name], name.split('/')[1].split('_lr')[0]
    factor = float(name.split('_lr')[1].split('x')[0])
    assert config.learning_rate == pytest.approx(runs[f'{variant}/seed_0'].learning_rate * factor)
    assert config.num_train_steps == study_plan.REGIMES['small']['num_train_steps'] // 4
    assert config.patience == 0 and config.warmup_steps == runs[f'{variant}/seed_0'].warmup_steps


def _finish(run_dir, *, bleu, split='test', hypotheses=None, diverged=False):
  """A run folder as a finished run leaves it: result, and its translations."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, workdir_lib.RESULT), 'w') as f:
    json.dump({'code_version': 'code-test', 'diverged': diverged, 'bleu': bleu,
               'split': split}, f)
  if hypotheses is not None:
    with open(os.path.join(run_dir, f'{split}_hypotheses.en'), 'w') as f:
      f.write(''.join(h + '\n' for h in hypotheses))


def test_each_norm_variant_takes_its_grids_best_rate_that_uses_the_source(tmp_path):
  references = [f'and the man {i} went to the city of {i * 3}' for i in range(40)]
  (tmp_path / workdir_lib.ExperimentDir.VALIDATION_REFERENCES).write_text(
      ''.join(r + '\n' for r in references))
  constant = ['and the man went to the city'] * 40  # The best BLEU, and ignores the source.
  partial = [r.rsplit(' ', 2)[0] for r in references]
  exact = list(references)
  points = {'baseline': {0.5: partial, 1.0: exact, 2.0: 'diverged'},
            'pre_ln': {0.25: partial, 0.5: exact, 1.0: exact, 2.0: constant}}
  for variant, by_factor in points.items():
    for factor, hypotheses in by_factor.items():
      run_dir = tmp_path / study_plan.grid_name(variant, factor) / 'seed_0'
      if hypotheses == 'diverged':
        _finish(run_dir, bleu=0.0, diverged=True, split='validation')
      else:
        from sacrebleu import corpus_bleu  # pylint: disable=g-import-not-at-top
        _finish(run_dir, bleu=corpus_bleu(hypotheses, [references]).score, split='validation',
                hypotheses=hypotheses)
  plan = study.Study('small', str(tmp_path), variants=['baseline', 'pre_ln', 'no_dropout'])
  # pre_ln: 2.0 emits one string whatever the source; 0.5 and 1.0 tie (ties go to the
  # smaller rate), and 0.5 being the grid's smallest, 0.25 was trained too and is worse.
  # no_dropout: the baseline's network, the baseline's rate.
  assert plan.factors() == {'baseline': 1.0, 'pre_ln': 0.5, 'no_dropout': 1.0}
  rates = {name: config.learning_rate for name, config in plan.seed_configs(
      {'baseline': 1, 'pre_ln': 1, 'no_dropout': 1}).items()}
  configured = plan.config('pre_ln').learning_rate
  assert rates['pre_ln/seed_0'] == pytest.approx(configured * 0.5)
  assert rates['baseline/seed_0'] == rates['no_dropout/seed_0'] == pytest.approx(configured)


def test_a_grid_where_no_rate_uses_the_source_falls_back_to_the_configured_rate(tmp_path):
  references = [f'line {i} of the text' for i in range(20)]
  (tmp_path / workdir_lib.ExperimentDir.VALIDATION_REFERENCES).write_text(
      ''.join(r + '\n' for r in references))
  for factor in study_plan.LR_FACTORS:
    _finish(tmp_path / study_plan.grid_name('baseline', factor) / 'seed_0', bleu=1.0,
            split='validation', hypotheses=['line of the text'] * 20)
  assert study.Study('small', str(tmp_path), variants=['baseline']).factors() == {'baseline': 1.0}


def test_a_grid_whose_best_rate_is_an_edge_trains_past_it(tmp_path, monkeypatch):
  """Validation BLEU rises with the rate up to 2x and falls at 4x: the study trains the grid,
  then 4x, and chooses 2x; a variant best at 0.5x gets 0.25x; no grid goes past
  EDGE_FACTORS."""
  from sacrebleu import corpus_bleu  # pylint: disable=g-import-not-at-top
  references = [f'and the man {i} went to the city of {i * 3}' for i in range(40)]
  (tmp_path / workdir_lib.ExperimentDir.VALIDATION_REFERENCES).write_text(
      ''.join(r + '\n' for r in references))
  words_dropped = {'baseline': {0.5: 3, 1.0: 2, 2.0: 1, 4.0: 2},
                   'pre_ln': {0.25: 1, 0.5: 0, 1.0: 2, 2.0: 3}}
  batches = []

  def fake_run_jobs(jobs, parallel_runs, stop_at, split='test'):
    del parallel_runs, stop_at
    if split != study_plan.GRID_SPLIT:
      raise study.TimeUp()  # The grid is what this test is about.
    batches.append(sorted(os.path.relpath(workdir, tmp_path) for _, workdir in jobs))
    for _, workdir in jobs:
      if not os.path.exists(os.path.join(workdir, workdir_lib.RESULT)):
        name = os.path.relpath(workdir, tmp_path).split('/')[1]
        variant, factor = name.split('_lr')[0], float(name.split('_lr')[1].rstrip('x'))
        dropped = words_dropped[variant][factor]
        hypotheses = [r.rsplit(' ', dropped)[0] if dropped else r for r in references]
        _finish(workdir, bleu=corpus_bleu(hypotheses, [references]).score,
                split='validation', hypotheses=hypotheses)

  monkeypatch.setattr(study, '_run_jobs', fake_run_jobs)
  monkeypatch.setattr(study, 'write_references', lambda config, experiment: None)
  plan = study.Study('small', str(tmp_path), variants=['baseline', 'pre_ln'], learner=False,
                     reruns=False)
  assert study.run_study(plan, max_minutes=60) is None  # The fake stops it at the seeds.
  grid = lambda variant, factors: [f'lr_grid/{variant}_lr{f:g}x/seed_0' for f in factors]
  first = sorted(grid('baseline', (0.5, 1, 2)) + grid('pre_ln', (0.5, 1, 2)))
  extended = sorted(grid('baseline', (0.5, 1, 2, 4)) + grid('pre_ln', (0.25, 0.5, 1, 2)))
  assert batches == [first, extended]  # Then the grid calls for nothing more.
  assert plan.factors() == {'baseline': 2.0, 'pre_ln': 0.5}
  # Better at every larger rate: doubled up to the edge, and no further.
  better_up = {f: {'bleu': f, 'uses_source': True} for f in study_plan.all_grid_factors()}
  assert study_plan.grid_factors(better_up) == [
      f for f in study_plan.all_grid_factors() if f >= min(study_plan.LR_FACTORS)]
  assert max(study_plan.all_grid_factors()) == study_plan.EDGE_FACTORS[1]


def test_variants_close_to_the_baseline_get_more_seeds_and_so_does_the_baseline(tmp_path):
  bleus = {'baseline': [5.0, 5.2, 4.8], 'pre_ln': [5.5, 5.9, 5.6], 'rms_norm': [7.0, 6.5, 6.8],
           'rezero': [5.0, 5.1]}  # rezero's third seed is unfinished: 3 for now.
  for variant, values in bleus.items():
    for seed, bleu in enumerate(values):
      _finish(tmp_path / variant / f'seed_{seed}', bleu=bleu)
  plan = study.Study('small', str(tmp_path), variants=list(bleus), seeds=3, more_seeds=5)
  assert plan.seeds_of() == {'baseline': 5, 'pre_ln': 5, 'rms_norm': 3, 'rezero': 3}
  assert study_plan.seeds_needed([5.0, 5.2, 4.8], [5.9, 6.2, 5.8]) == 5  # |diff| 0.97
  assert study_plan.seeds_needed([5.0, 5.2, 4.8], [6.0, 6.2, 5.8]) == 3  # |diff| exactly 1.0


def progress_row(plan: study.Study, run: str) -> list[str]:
  """The cells after the run's name in study.progress's table."""
  lines = study.progress(plan)
  assert lines[-1].strip().endswith('(study_plan adds seeds where a variant ends close to '
                                    'the baseline).')
  return next([c.strip() for c in line.strip('|').split('|')][1:] for line in lines
              if line.startswith(f'| {run} |'))


def test_max_minutes_saves_and_the_same_call_resumes_to_the_end(bible_config, tmp_path,
                                                                 monkeypatch):
  """The clock jumps past --max_minutes after the step-2 checkpoint: the run saves and the
  study returns None with no result written; called again, it trains steps 3-4 and reports."""
  from transformer import checkpoints, datasets, training  # pylint: disable=g-import-not-at-top
  real_load_pairs = datasets.load_pairs
  monkeypatch.setattr(datasets, 'load_pairs', lambda config, split: real_load_pairs(
      config, split)[:8] if split in ('test', 'validation') else real_load_pairs(config, split))
  clock = [time.time()]
  fake_time = types.SimpleNamespace(time=lambda: clock[0], perf_counter=time.perf_counter)
  monkeypatch.setattr(training, 'time', fake_time)
  monkeypatch.setattr(study, 'time', fake_time)
  real_save = checkpoints.Checkpointer.save

  def save_then_jump(self, step, *args):
    real_save(self, step, *args)
    if step == 2:
      clock[0] += 3600

  monkeypatch.setattr(checkpoints.Checkpointer, 'save', save_then_jump)
  plan = study.Study('small', str(tmp_path), variants=['baseline'], seeds=1, more_seeds=1,
                     lr_grid=False, learner=False, reruns=False,
                     overrides={**TINY, 'data_dir': bible_config.data_dir})
  assert study.run_study(plan, max_minutes=30) is None
  run = workdir_lib.ExperimentDir(str(tmp_path)).run('baseline')
  assert run.saved_steps() == [2] and run.result() is None
  assert progress_row(plan, 'baseline/seed_0') == ['saved', '2 of 4', '–', '–', '–']
  monkeypatch.setattr(checkpoints.Checkpointer, 'save', real_save)
  assert study.run_study(plan, max_minutes=30) is not None
  assert run.result()['num_train_steps'] == 4 and run.saved_steps()[-1] == 4
  result = run.result()
  assert progress_row(plan, 'baseline/seed_0') == [
      'finished', '4', str(result['step']), f"{result['bleu']:.2f}", 'test']
  assert [r['step'] for r in run.metrics() if 'train/loss' in r] == [1, 2, 3, 4]
  assert os.path.exists(run.hypotheses_path())


def test_pilot_runs_are_the_baseline_under_the_stopping_rule():
  runs = study.pilot_configs('small')
  assert list(runs) == [f'{name}/seed_0' for name in study_plan.PILOT_RUNS]
  for name, config in runs.items():
    for field, value in {**study_plan.PILOT_RULE,
                         **study_plan.PILOT_RUNS[name.rsplit('/', 1)[0]]}.items():
      assert config[field] == value
    assert config.model.norm == 'layer_norm' and config.model.norm_position == 'post'


def test_the_gpu_regimes_dry_run_prints_its_plan(bible_config, bible_tokenizer):
  """study.py --scale=bible_base --dry_run, as CI runs it: every run at Transformer-base size
  in bfloat16, R-Drop at twice the FLOPs, hours = steps x FLOPs / (peak x MFU)."""
  del bible_tokenizer  # Trained once for the session: the plan tokenizes with it.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  run = subprocess.run(
      [sys.executable, 'study.py', '--scale=bible_base', '--dry_run', '--variants=baseline,r_drop',
       '--seeds=1', '--no_lr_grid', '--no_learner', f'--config.data_dir={bible_config.data_dir}',
       '--config.vocab_size=4000'], capture_output=True, text=True, timeout=600,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert run.returncode == 0, run.stderr
  rows = {cells[0]: cells for cells in (
      [c.strip() for c in line.strip('|').split('|')] for line in run.stdout.splitlines()
      if line.startswith('| ') and not line.startswith('| run'))}
  assert set(rows) == {'baseline/seed_0', 'r_drop/seed_0', 'rerun/baseline/seed_0', 'total'}
  baseline, r_drop = rows['baseline/seed_0'], rows['r_drop/seed_0']
  assert baseline[1] == '20,000' and baseline[5] == 'bfloat16'
  assert float(r_drop[7].replace(',', '')) == pytest.approx(
      2 * float(baseline[7].replace(',', '')), abs=1)
  gflop, hours = float(baseline[7].replace(',', '')), float(baseline[8])
  assert hours == pytest.approx(20_000 * gflop * 1e9 / (study.PLAN_GPU[1] * study.PLAN_MFU)
                                / 3600, abs=0.006)
