"""The report's statistics, from hand-made run directories (no training): every figure is
checked against NumPy, sacreBLEU or the verdict rule applied by hand."""

import json
import os
import re

import numpy as np
import pytest
import sacrebleu

import test_learner_report
from transformer import report
from transformer import significance

REFERENCES = [f'the cat number {i} sat on the mat with dog {i % 7} today .' for i in range(80)]


def degrade(sentences, every, seed):
  """Drops about half the words of every `every`-th sentence: a system of known quality."""
  rng = np.random.default_rng(seed)
  return [' '.join(w for w in s.split() if i % every or rng.random() > 0.5)
          for i, s in enumerate(sentences)]


def write_run(run_dir, *, eval_losses, train_losses, hypotheses, config=None, diverged=False):
  os.makedirs(run_dir)
  steps = 100 * np.arange(1, len(eval_losses) + 1)
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps({'step': 0, 'params/count': 1234}) + '\n')
    for step, val, train in zip(steps, eval_losses, train_losses):
      f.write(json.dumps({'step': int(step), 'train/loss': train + 0.5,
                          'time/wall_seconds': float(step)}) + '\n')
      f.write(json.dumps({'step': int(step), 'eval/loss': val, 'eval/train_loss': train,
                          'eval/bleu': 1.0, 'eval/nonfinite_total': 0.0}) + '\n')
  result = {'code_version': 'code-test', 'diverged': diverged, 'num_train_steps': int(steps[-1])}
  if hypotheses is not None:
    with open(os.path.join(run_dir, 'test_hypotheses.en'), 'w') as f:
      f.write('\n'.join(hypotheses) + '\n')
    score = sacrebleu.corpus_bleu(hypotheses, [REFERENCES])
    result.update(bleu=score.score, chrf=sacrebleu.corpus_chrf(hypotheses, [REFERENCES]).score,
                  bleu_signature='sig')
  with open(os.path.join(run_dir, 'test_result.json'), 'w') as f:
    json.dump(result, f)
  with open(os.path.join(run_dir, 'config.json'), 'w') as f:
    json.dump({'dataset_name': 'bible_fr_en', 'num_train_steps': int(steps[-1]),
               'max_train_pairs': 2000, 'lr_schedule': 'linear', 'warmup_steps': 100,
               'learning_rate': 1e-3, 'model': {'emb_dim': 8, 'num_layers': 1},
               **(config or {})}, f)


@pytest.fixture(scope='module')
def study_dir(tmp_path_factory):
  """Baseline and no_dropout, 3 seeds: no_dropout much worse on test, with a wider gap."""
  root = tmp_path_factory.mktemp('study')
  with open(root / 'test_references.en', 'w') as f:
    f.write('\n'.join(REFERENCES) + '\n')
  for seed in range(3):
    # The baseline's best validation loss is at step 200 of 400: it has begun to over-fit.
    write_run(root / 'baseline' / f'seed_{seed}', eval_losses=[3.0, 2.5 + 0.01 * seed, 2.6, 2.7],
              train_losses=[3.0, 2.4, 2.2, 2.0], hypotheses=degrade(REFERENCES, 3, seed))
    write_run(root / 'no_dropout' / f'seed_{seed}', eval_losses=[2.9, 2.7, 2.9, 3.1 + 0.02 * seed],
              train_losses=[2.8, 2.0, 1.5, 1.0], hypotheses=degrade(REFERENCES, 1, 10 + seed))
  for variant in ('baseline', 'pre_ln'):
    for factor, diverged in ((1.0, False), (4.0, variant == 'baseline')):
      for warmup in (100, 0):
        name = f"{variant}_lr{factor:g}x_{'warmup' if warmup else 'no_warmup'}"
        # pre_ln at 4x: translates with warm-up, collapses to commas without it.
        hypotheses = ({100: degrade(REFERENCES, 2, 0), 0: [', ,'] * len(REFERENCES)}[warmup]
                      if (variant, factor) == ('pre_ln', 4.0) else None)
        write_run(root / 'lr_grid' / name / 'seed_0', eval_losses=[3.0, 2.0 + factor / 10],
                  train_losses=[3.0, 2.0], hypotheses=hypotheses, diverged=diverged,
                  config={'learning_rate': 1e-3 * factor, 'warmup_steps': warmup})
  grid = sorted(os.path.relpath(p, root) for p in (root / 'lr_grid').iterdir())
  path = report.write_report(str(root), variants=['baseline', 'no_dropout'], lr_grid=grid)
  with open(path) as f:
    return root, f.read()


def table(text, heading):
  lines = text.split(heading, 1)[1].splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('| '))
  rows = {}
  for line in lines[start:]:
    if not line.startswith('|'):
      break
    cells = [c.strip() for c in line.strip('|').split('|')]
    if not set(cells[0]) <= {'-'}:
      rows[' '.join(cells[:2]) if heading == '## Learning-rate' else cells[0]] = cells
  return rows


def bleu_of(root, name, seed):
  with open(root / name / f'seed_{seed}' / 'test_result.json') as f:
    return json.load(f)['bleu']


def test_variant_table_is_mean_and_std_over_seeds(study_dir):
  root, text = study_dir
  rows = table(text, '## The variants')
  bleus = [bleu_of(root, 'no_dropout', s) for s in range(3)]
  deltas = [bleu_of(root, 'no_dropout', s) - bleu_of(root, 'baseline', s) for s in range(3)]
  cells = rows['no_dropout']
  assert cells[1] == '3'
  assert cells[2] == f'{np.mean(bleus):.2f} ± {np.std(bleus, ddof=1):.2f}'
  assert cells[3] == f'{np.mean(deltas):.2f} ± {np.std(deltas, ddof=1):.2f}'
  gaps = [3.1 + 0.02 * s - 1.0 for s in range(3)]
  assert cells[7] == f'{np.mean(gaps):.3f} ± {np.std(gaps, ddof=1):.3f}'
  assert rows['baseline'][5].endswith('(200, 200, 200)')  # Best validation loss: step 200.


def test_regime_reads_where_the_baseline_best_came(study_dir):
  _, text = study_dir
  assert 'came at step 200, 200, 200' in text and '50 ± 0% of the budget' in text
  assert 'has begun to over-fit' in text and 'has not begun' not in text


def test_bootstrap_cells_are_sacrebleu_paired_tests_by_seed(study_dir):
  root, text = study_dir
  cells = table(text, 'Paired bootstrap')['no_dropout']
  for seed in range(3):
    read = lambda name: open(root / name / f'seed_{seed}' / 'test_hypotheses.en').read().splitlines()
    expected = significance.paired_bootstrap(read('baseline'), {'v': read('no_dropout')},
                                             REFERENCES)['v']
    assert cells[1 + seed] == (f"{expected['delta']:+.2f} [{expected['delta_low']:+.2f}, "
                               f"{expected['delta_high']:+.2f}], p={expected['p_value']:.3f}")


def test_claims_follow_the_verdict_rule(study_dir):
  _, text = study_dir
  claims = {line.split(':')[0][2:]: line for line in text.splitlines()
            if line.startswith('- ') and '**' in line}
  bleu_claim = claims['Without dropout a small corpus over-fits']
  # Every seed of no_dropout drops words from every sentence: far worse, p < 0.05 each time.
  assert bleu_claim.endswith('**agrees**.')
  assert claims['Without dropout the gap between validation and training loss grows (Srivastava '
                'et al. 2014)'].endswith('**agrees**.')
  assert significance.VERDICT_RULE in text


def test_lr_grid_table_and_plots(study_dir):
  root, text = study_dir
  rows = table(text, '## Learning-rate')
  assert rows['baseline yes'][2:] == ['2.100', 'diverged']
  assert rows['pre_ln yes'][2:] == ['2.100', '2.400']
  assert rows['pre_ln no'][2:] == ['2.100', '2.400 (collapsed)']
  assert 'pre_ln without warm-up trained at 1 of 2 rates (collapsed at 0.004)' in text
  assert 'baseline with warm-up trained at 1 of 2 rates (diverged at 0.004)' in text
  for plot in re.findall(r'\]\((plots/lr_sensitivity[^)]+)\)', text):
    assert os.path.getsize(root / plot) > 1000
  assert len(re.findall(r'plots/lr_sensitivity', text)) == 2


def test_an_unfinished_baseline_says_the_regime_is_unproven(tmp_path):
  write_run(tmp_path / 'baseline' / 'seed_0', eval_losses=[3.0, 2.8, 2.6, 2.5],
            train_losses=[3.0, 2.7, 2.5, 2.4], hypotheses=degrade(REFERENCES, 3, 0))
  with open(report.write_report(str(tmp_path), variants=['baseline'])) as f:
    text = f.read()
  assert 'came at step 400' in text and 'has not begun to over-fit' in text


def test_learner_section_reads_the_measurements_and_the_learner_runs(tmp_path):
  """report.py hands the section to learner_report (tests/test_learner_report.py checks it)
  with the variants and the learner runs it loaded."""
  for name, losses in (('baseline', [3.0, 2.5, 2.6]), ('learner/no_positions', [3.2, 3.0, 3.1])):
    write_run(tmp_path / name / 'seed_0', eval_losses=losses, train_losses=[3.0, 2.4, 2.2],
              hypotheses=degrade(REFERENCES, 2 if name == 'baseline' else 1, 0))
  test_learner_report.write(tmp_path, test_learner_report.measurements(tmp_path))
  with open(report.write_report(os.fspath(tmp_path), variants=['baseline'])) as f:
    text = f.read().split('## Questions a learner asks', 1)[1]
  assert 'Read from `baseline/seed_0` (step 3000)' in text
  assert "Without positions the best validation loss is 3.000 against the baseline's 2.500" in text
  assert 'What does the KV cache save?' in text
