"""REPORT.md for a study directory: the regime, the learning-rate grid, the variants with
intervals over seeds and test sentences, the literature's claims under Holm's correction,
the same-seed reruns and retrains, curves, and a learner's questions.

Every number in the report is computed here, or in the modules it calls (run_records,
report_regime, report_grid, report_tables, claims, significance), from files the runs wrote;
nothing is typed in by hand, so the report is reproduced from the committed runs alone. No
JAX: tests/test_layout.py checks it.
"""

import json
import math
import os
from typing import Optional, Sequence

from transformer import claims as claims_lib
from transformer import cli
from transformer import learner_report
from transformer import plots
from transformer import report_grid
from transformer import report_regime
from transformer import report_tables
from transformer import run_records
from transformer import significance
from transformer import study_plan
from transformer import workdir as workdir_lib

_SEED_MEASURES = ('early_eval_loss', 'eval_loss_at_peak')


def _one_value(groups: dict[str, list[dict]], field: str, what: str, remedy: str) -> str:
  """`run[field]` of every finished run, which must be one value: else a UserError naming all."""
  values = {}
  for runs in groups.values():
    for run in runs:
      if run['finished']:
        values.setdefault(run[field], []).append(run['dir'])
  if len(values) > 1:
    listing = '; '.join(f'{value}: {len(dirs)} runs (e.g. {dirs[0]})'
                        for value, dirs in sorted(values.items()))
    raise cli.UserError(f'The runs were trained {what}, so one table would compare that as '
                        f'well as the variants: {listing}. {remedy}')
  return next(iter(values), 'unrecorded')


def check_one_code_version(groups: dict[str, list[dict]]) -> str:
  """The code version of every finished run; a mix of versions is refused."""
  return _one_value(groups, 'code_version', 'by different code',
                    'Retrain the older runs in a new experiment_dir.')


def check_one_vocabulary(groups: dict[str, list[dict]]) -> str:
  """The vocabulary fingerprint of every finished run; a mix is refused."""
  return _one_value(groups, 'vocabulary', 'with different vocabularies',
                    'Train every run of one experiment with one vocabulary.')


def _fmt(values: Sequence[float], digits: int = 2) -> str:
  return significance.format_mean_std([v for v in values if not math.isnan(v)], digits)


def _read_optional_lines(path: str) -> Optional[list[str]]:
  return run_records.read_lines(path) if os.path.exists(path) else None


def _bleu_over_seeds(groups: dict[str, list[dict]], references: Optional[list[str]]
                     ) -> Optional[significance.OverSeeds]:
  """significance.bootstrap_bleu of every variant whose finished seeds all have test
  translations (a diverged seed has none and is left out: the table counts it)."""
  systems = {}
  for name, runs in groups.items():
    good = [r for r in runs if not r['diverged']]
    if good and all(r['hypotheses'] for r in good):
      systems[name] = [run_records.hypotheses(r) for r in good]
  if not references or 'baseline' not in systems:
    return None
  return significance.bootstrap_bleu(systems, references)


def _claim_deltas(groups: dict[str, list[dict]], bleu: Optional[significance.OverSeeds]
                  ) -> dict[str, dict[str, significance.Estimate]]:
  """{variant: {measure: variant - baseline}} of every measure a claim names."""
  deltas = {name: {'bleu': estimate} for name, estimate in (bleu.deltas if bleu else {}).items()}
  trained = {name: [r for r in runs if not r['diverged']] for name, runs in groups.items()}
  for measure in _SEED_MEASURES:
    values = {name: [r[measure] for r in runs if not math.isnan(r[measure])]
              for name, runs in trained.items()}
    compared = significance.welch_seeds({k: v for k, v in values.items() if v})
    for name, estimate in compared.deltas.items():
      deltas.setdefault(name, {})[measure] = estimate
  for name, estimate in _gaps_at_common_step(trained).items():
    deltas.setdefault(name, {})['gap_at_common_step'] = estimate
  return deltas


def _gaps_at_common_step(trained: dict[str, list[dict]]) -> dict[str, significance.Estimate]:
  """Each variant's over-fitting gap against the baseline's at the same step: the last one
  that every run of the two reached. At the tested checkpoint instead, a variant that
  over-fits early (no dropout peaks at a tenth of the baseline's steps) would be compared
  before it over-fits with a baseline long after."""
  baseline = trained.get('baseline', [])
  out = {}
  for name, runs in trained.items():
    if name == 'baseline' or not runs or not baseline:
      continue
    step = min(r['stop_step'] for r in runs + baseline)
    gaps = {key: [g for g in (run_records.gap_at(r, step) for r in group) if not math.isnan(g)]
            for key, group in (('baseline', baseline), (name, runs))}
    if all(gaps.values()):
      out[name] = significance.welch_seeds(gaps).deltas[name]
  return out


def _unended(groups: dict[str, list[dict]]) -> dict[str, str]:
  """{variant: why} for each variant with a seed that the budget stopped before patience
  ran out, its validation BLEU still improving (run_records' 'still_improving')."""
  out = {}
  for name, runs in groups.items():
    going = [r for r in runs if r['still_improving']]
    if going:
      seeds = ', '.join(f'seed {run_records.seed_of(r)}' for r in going)
      out[name] = (f"{name} {seeds} stopped by the budget of {going[0]['budget']:,} steps "
                   'before patience ran out: not where it ends')
  return out


def _checkpoint_and_year_table(groups: dict[str, list[dict]]) -> list[str]:
  """Test BLEU of the best checkpoint and of the checkpoint average, overall and per year."""
  runs = {name: runs[0] for name, runs in groups.items() if runs and (
      runs[0]['average'] or runs[0]['test_sets'])}
  if not runs:
    return []
  years = sorted({y for r in runs.values() for y in r['test_sets']})
  header = ['variant', 'checkpoint', 'test'] + years
  lines = ['Test BLEU by checkpoint (best validation BLEU; mean of the last checkpoints) and '
           'by test year (first seed).', '', '| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  for name, run in runs.items():
    rows = [('best', {'bleu': run['bleu'], 'test_sets': run['test_sets']})]
    if run['average']:
      rows.append((f"average (step {run['average']['step']})", run['average']))
    for label, scores in rows:
      cells = [name, label, f"{scores['bleu']:.2f}"] + [
          f"{scores.get('test_sets', {}).get(y, {}).get('bleu', math.nan):.2f}" for y in years]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def _grad_norm_plots(groups: dict[str, list[dict]], plot_dir: str
                     ) -> list[tuple[str, Optional[str]]]:
  """Per-layer gradient norms of each norm variant's first seed (Xiong et al. 2020, Fig. 3):
  over training, and against depth at the first diagnostics step."""
  runs = {name: run_records.layer_grad_norms(groups[name][0]['rows'])
          for name in study_plan.NORM_VARIANTS if groups.get(name)}
  runs = {name: stacks for name, stacks in runs.items() if stacks}
  if not runs:
    return []
  first = {name: {stack: [norms[0] for _, norms in layers.values()]
                  for stack, layers in stacks.items()} for name, stacks in runs.items()}
  step = min(int(steps[0]) for stacks in runs.values() for layers in stacks.values()
             for steps, _ in layers.values())
  return [
      ('Per-layer gradient norms over training (Xiong et al. 2020, Fig. 3)',
       plots.plot_grad_norms_over_training(runs, os.path.join(plot_dir, 'grad_norms.png'))),
      ('Per-layer gradient norms at the first step measured', plots.plot_grad_norms_by_layer(
          first, os.path.join(plot_dir, 'grad_norms_by_layer.png'),
          title=f'Gradient norm by layer at step {step} (seed 0)')),
  ]


def _plots(groups: dict[str, list[dict]], plot_dir: str) -> list[tuple[str, Optional[str]]]:
  seeds = {name: [r['rows'] for r in runs] for name, runs in groups.items() if runs}
  made = [
      ('Validation loss', plots.plot_seed_bands(
          seeds, 'eval/loss', os.path.join(plot_dir, 'eval_loss.png'),
          title='Validation NLL (mean over seeds, ±1 std)', ylabel='cross-entropy')),
      ('Validation BLEU (greedy)', plots.plot_seed_bands(
          seeds, 'eval/bleu', os.path.join(plot_dir, 'eval_bleu.png'),
          title='Validation BLEU, greedy (mean over seeds, ±1 std)', ylabel='BLEU')),
      ('Training objective', plots.plot_seed_bands(
          seeds, 'train/loss', os.path.join(plot_dir, 'train_loss.png'),
          title='Training objective, dropout on (moving average of 50 steps)',
          ylabel='loss', smoothing=50)),
      ('Training vs validation loss', plots.plot_train_val_panels(
          seeds, os.path.join(plot_dir, 'train_vs_validation.png'))),
  ]
  return made + _grad_norm_plots(groups, plot_dir)


def write_report(experiment_dir: str, *,
                 variants: Sequence[str] = study_plan.STUDY_VARIANTS) -> str:
  """Writes REPORT.md and plots into `experiment_dir`; returns the report's path.

  The grid, pilot, reruns, retrains and learner runs are found where study_plan puts them.
  """
  experiment = workdir_lib.ExperimentDir(experiment_dir)
  groups = run_records.group(experiment, variants)
  grid_names = [study_plan.grid_name(v, f) for v in study_plan.NORM_VARIANTS
                for f in study_plan.all_grid_factors()]
  learner = run_records.group(experiment, list(study_plan.LEARNER_RUNS))
  grid = run_records.group(experiment, grid_names)
  checked = {**groups, **grid, **learner}
  code_version = check_one_code_version(checked)
  check_one_vocabulary(checked)
  finished = [r for runs in groups.values() for r in runs if not r['diverged']]
  references = _read_optional_lines(experiment.file(experiment.REFERENCES))
  plot_dir = experiment.file(experiment.PLOTS)
  os.makedirs(plot_dir, exist_ok=True)
  speed_path = experiment.file(experiment.SPEED)
  speed = None
  if os.path.exists(speed_path):
    with open(speed_path) as f:
      speed = json.load(f)

  lines = ['# The study: normalization and regularization in a fr→en Transformer', '']
  config = next((r['config'] for r in finished if r['config']), None)
  if config:
    lines += [f"Scale: dataset `{config['dataset_name']}`, d_model {config['model']['emb_dim']}, "
              f"{config['model']['num_layers']}+{config['model']['num_layers']} layers, at most "
              f"{config['num_train_steps']:,} steps, {config['lr_schedule']} schedule with "
              f"{config['warmup_steps']} warm-up steps. Seeds per variant: up to "
              f"{max(len(runs) for runs in groups.values())}. Code version {code_version} "
              "(provenance.code_version: the training code and library versions; every run "
              "has it).", '']
  pilots = report_regime.pilot_runs(experiment)
  reruns = run_records.group(experiment, sorted({study_plan.rerun_name(variant)
                                                 for variant, _ in study_plan.RERUNS}))
  flat = lambda named: [r for runs in named.values() for r in runs]
  lines += report_tables.compute_lines({
      'pilot': list(pilots.values()),
      'grid': flat(grid),
      "seeds, reruns and the learner's runs": flat({**groups, **reruns, **learner})})
  lines += report_regime.lines(pilots, groups.get('baseline', []),
                               learner.get('learner/no_positions', []), references, plot_dir)
  points = report_grid.grid_points(experiment)
  lines += report_grid.lines(points, plot_dir)
  chosen = report_grid.choices(points)
  rates = {name: report_grid.rate_cell(name, runs, points, chosen)
           for name, runs in groups.items()}

  bleu = _bleu_over_seeds(groups, references)
  lines += ['## The variants', ''] + report_tables.bleu_table(groups, bleu, rates)
  signatures = {r['bleu_signature'] for r in finished if r['bleu_signature']}
  if signatures:
    lines += ['', f"BLEU: sacreBLEU `{' / '.join(sorted(signatures))}`, beam search on the test "
              'split with the best-validation-BLEU checkpoint.']
  lines += [''] + report_tables.beside_bleu_table(groups, references, speed, code_version)
  unended = _unended(groups)
  if unended:
    lines += ['', 'Not ended: ' + '; '.join(unended.values()) + '.']
  extra = _checkpoint_and_year_table(groups)
  if extra:
    lines += [''] + extra

  layers = config['model']['num_layers'] if config else 0
  verdicts = claims_lib.judge(claims_lib.CLAIMS, _claim_deltas(groups, bleu), layers,
                              unended)
  lines += ['', '## Claims from the literature', ''] + claims_lib.lines(verdicts) + ['']
  lines += report_tables.rerun_lines(experiment, groups, references)
  lines += report_tables.retrain_lines(experiment)

  lines += ['## Plots', '']
  lines += [f'![{title}]({experiment.PLOTS}/{os.path.basename(path)})'
            for title, path in _plots(groups, plot_dir) if path]
  lines += ['', 'Gradient norms are those of each layer\'s parameters together (the root of the '
            'sum of squares of its blocks\' norms), of seed 0; a norm of exactly 0 has no '
            'place on a log axis and is left out.']

  lines += learner_report.lines(experiment, groups, {
      os.path.basename(name): runs[0] for name, runs in learner.items() if runs})
  path = experiment.file(experiment.REPORT)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path
