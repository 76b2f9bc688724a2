"""REPORT.md for a study directory: the regime, the variant table with its statistics, the
learning-rate grid, curves, and a reading of them.

Every number in the report is computed here from files the runs wrote (metrics.jsonl,
test_result.json, config.json, test hypotheses); nothing is typed in by hand. The sentences
that compare with the literature follow significance.VERDICT_RULE, so they say "agrees" only
when both the seeds and the test set's resampling do.
"""

import dataclasses
import math
import os
from typing import Optional, Sequence

import numpy as np

from transformer import cli
from transformer import learner_report
from transformer import plots
from transformer import significance
from transformer import workdir as workdir_lib

# The baseline has begun to over-fit when its best validation loss comes before this
# fraction of its budget: a regime where regularizers have something to act on.
OVERFIT_BEFORE = 0.75
# A grid run that kept finite losses but translates nothing: below this test BLEU it emits the
# same few strings whatever the source (the failure of post-LN without warm-up, Xiong et al.
# 2020). On the small study the collapsed runs score 0.003 and the weakest working one 0.19.
COLLAPSED_BLEU = 0.1


@dataclasses.dataclass(frozen=True)
class Claim:
  """A result from the literature, as the sign of (variant - baseline) of one measure."""
  variant: str
  text: str
  measure: str  # 'bleu' (bootstrap and seeds), 'early_eval_loss' or 'gap' (seeds only).
  sign: int


LITERATURE = (
    Claim('pre_ln', 'Pre-LN trains faster early on (Xiong et al. 2020)', 'early_eval_loss', -1),
    Claim('rezero', 'ReZero trains faster early on than post-LN (Bachlechner et al. 2020)',
          'early_eval_loss', -1),
    Claim('batch_norm', 'BatchNorm translates worse than LayerNorm (Shen et al. 2020)',
          'bleu', -1),
    Claim('no_dropout', 'Without dropout a small corpus over-fits: lower BLEU (Vaswani et al. '
          '2017; Sennrich & Zhang 2019)', 'bleu', -1),
    Claim('no_dropout', 'Without dropout the gap between validation and training loss grows '
          '(Srivastava et al. 2014)', 'gap', +1),
    Claim('strong_dropout', 'More dropout helps a small corpus: higher BLEU (Sennrich & Zhang '
          '2019)', 'bleu', +1),
    Claim('strong_dropout', 'More dropout narrows the validation-training gap (Srivastava et '
          'al. 2014)', 'gap', -1),
    Claim('label_smoothing', 'Label smoothing raises BLEU (Vaswani et al. 2017; Müller et al. '
          '2019)', 'bleu', +1),
    Claim('r_drop', 'R-Drop raises BLEU (Liang et al. 2021)', 'bleu', +1),
)
MEASURE_NAMES = {'bleu': 'test BLEU', 'early_eval_loss': 'early validation loss',
                 'gap': 'final validation - training loss'}


def _last(rows: Sequence[dict], key: str) -> float:
  _, values = plots.series(rows, key)
  return float(values[-1]) if len(values) else math.nan


def _load_run(run: workdir_lib.Workdir) -> dict:
  rows = run.metrics()
  result = run.result() or {}
  config = run.config().to_dict() if run.has_config() else {}
  eval_steps, eval_loss = plots.series(rows, 'eval/loss')
  params = [row['params/count'] for row in rows if 'params/count' in row]
  walls = [row['time/wall_seconds'] for row in rows if 'time/wall_seconds' in row]
  skipped = [row['eval/nonfinite_total'] for row in rows if 'eval/nonfinite_total' in row]
  hypotheses = run.hypotheses_path()
  vocabulary = run.vocabulary_fingerprint()
  return {
      'dir': run.path, 'rows': rows, 'config': config, 'diverged': result.get('diverged', False),
      'bleu': result.get('bleu', math.nan), 'chrf': result.get('chrf', math.nan),
      'bleu_signature': result.get('bleu_signature', ''),
      'best_eval_loss': float(eval_loss.min()) if len(eval_loss) else math.nan,
      'best_step': int(eval_steps[eval_loss.argmin()]) if len(eval_loss) else 0,
      'early_eval_loss': float(eval_loss[0]) if len(eval_loss) else math.nan,
      'final_eval_loss': float(eval_loss[-1]) if len(eval_loss) else math.nan,
      'gap': _last(rows, 'eval/loss') - _last(rows, 'eval/train_loss'),
      'params': int(params[0]) if params else 0,
      'wall_seconds': walls[-1] if walls else math.nan,
      'skipped': int(skipped[-1]) if skipped else 0,
      'average': result.get('average', {}), 'test_sets': result.get('test_sets', {}),
      'code_version': result.get('code_version', 'unrecorded'),
      'vocabulary': vocabulary[:12] if vocabulary else 'unrecorded',
      'hypotheses': hypotheses if os.path.exists(hypotheses) else None,
      'finished': bool(result),
  }


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


def _group(experiment: workdir_lib.ExperimentDir,
           names: Sequence[str]) -> dict[str, list[dict]]:
  """{name: its finished runs, seed order}; an unfinished run is not reported yet."""
  groups = {}
  for name in names:
    loaded = [_load_run(run) for _, run in experiment.seeds(name)]
    groups[name] = [run for run in loaded if run['finished']]
  return groups


def _fmt(values: Sequence[float], digits: int = 2) -> str:
  return significance.format_mean_std([v for v in values if not math.isnan(v)], digits)


def _by_seed(runs: Sequence[dict]) -> dict[int, dict]:
  return {int(r['dir'].rsplit('_', 1)[1]): r for r in runs if not r['diverged']}


def _bootstrap(groups: dict[str, list[dict]], references: Optional[list[str]]
               ) -> dict[str, dict[int, dict]]:
  """{variant: {seed: paired bootstrap against the baseline's same seed}} on the test split."""
  if not references or not groups.get('baseline'):
    return {}
  out = {}
  for seed, base in _by_seed(groups['baseline']).items():
    if not base['hypotheses']:
      continue
    systems = {}
    for name, runs in groups.items():
      run = _by_seed(runs).get(seed)
      if name != 'baseline' and run and run['hypotheses']:
        systems[name] = _read_lines(run['hypotheses'])
    if systems:
      tested = significance.paired_bootstrap(_read_lines(base['hypotheses']), systems,
                                             references)
      for name in systems:
        out.setdefault(name, {})[seed] = tested[name]
  return out


def _read_lines(path: str) -> list[str]:
  with open(path) as f:
    return f.read().splitlines()


def _deltas(groups: dict[str, list[dict]], name: str, measure: str) -> list[float]:
  """Per seed present in both: variant - baseline of `measure`."""
  base, runs = _by_seed(groups.get('baseline', [])), _by_seed(groups.get(name, []))
  return [runs[s][measure] - base[s][measure] for s in sorted(runs) if s in base]


def _regime_lines(groups: dict[str, list[dict]]) -> list[str]:
  """Whether the baseline has begun to over-fit: where its best validation loss came."""
  runs = [r for r in groups.get('baseline', []) if not r['diverged']]
  if not runs:
    return []
  budget = runs[0]['config'].get('num_train_steps') or max(
      int(plots.series(r['rows'], 'eval/loss')[0][-1]) for r in runs)
  fractions = [r['best_step'] / budget for r in runs]
  train_losses = [_last(r['rows'], 'eval/train_loss') for r in runs]
  holds = all(f < OVERFIT_BEFORE for f in fractions)
  config = runs[0]['config']
  subset = config.get('max_train_pairs') or 'all'
  return [
      '## The regime', '',
      f"Every run trains {budget:,} steps on {subset} training pairs of "
      f"`{config.get('dataset_name')}`. The baseline's best validation loss came at step "
      f"{', '.join(str(r['best_step']) for r in runs)} (seed by seed; "
      f"{_fmt([100 * f for f in fractions], 0)}% of the budget); from there to the end its "
      f"validation loss rose by {_fmt([r['final_eval_loss'] - r['best_eval_loss'] for r in runs], 3)} "  # pylint: disable=line-too-long
      f"while its training loss fell to {_fmt(train_losses, 3)} "
      f"(both without dropout). " + (
          f'The best came before the last quarter in every seed: the baseline has begun to '
          f'over-fit, so a regularizer has something to act on, and normalization still shows '
          f'in the first evaluations.' if holds else
          f'**The best did not come before {OVERFIT_BEFORE:.0%} of the budget in every seed: '
          f'the baseline has not begun to over-fit, so regularizers are read in a regime '
          f'where they can only slow training. Train longer or on fewer pairs.**'), '']


def _variant_table(groups: dict[str, list[dict]], first_eval: int) -> list[str]:
  lines = [
      f'Mean ± standard deviation over seeds. Early loss: validation loss at the first '
      f'evaluation (step {first_eval}), how fast a variant starts; best loss: the lowest '
      'evaluation (its step in brackets); gap: validation minus training loss at the end, both '
      'measured without dropout or smoothing on as many sentences (what regularization should '
      "close); ΔBLEU: against the baseline's same seed. Wall time is the training loop's own "
      'clock on a machine other jobs may share: compare it only roughly.', '',
      '| variant | seeds | test BLEU | ΔBLEU | chrF | best val loss | early val loss | gap '
      '| wall time (min) | skipped steps | params |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for name, runs in groups.items():
    if not runs:
      continue
    good = [r for r in runs if not r['diverged']]
    diverged = len(runs) - len(good)
    delta = '–' if name == 'baseline' else _fmt(_deltas(groups, name, 'bleu'))
    lines.append(
        f"| {name} | {len(runs)}{f' ({diverged} diverged)' if diverged else ''} "
        f"| {_fmt([r['bleu'] for r in good])} | {delta} | {_fmt([r['chrf'] for r in good])} "
        f"| {_fmt([r['best_eval_loss'] for r in good], 3)} "
        f"({', '.join(str(r['best_step']) for r in good)}) "
        f"| {_fmt([r['early_eval_loss'] for r in good], 3)} "
        f"| {_fmt([r['gap'] for r in good], 3)} "
        f"| {_fmt([r['wall_seconds'] / 60 for r in runs], 1)} "
        f"| {sum(r['skipped'] for r in runs)} | {runs[0]['params']:,} |")
  return lines


def _bootstrap_table(tests: dict[str, dict[int, dict]]) -> list[str]:
  if not tests:
    return []
  seeds = sorted({s for by_seed in tests.values() for s in by_seed})
  lines = [
      f'Paired bootstrap (sacreBLEU, {significance.BOOTSTRAP_SAMPLES:,} resamples of the test '
      "split) of each variant against the baseline's same seed: ΔBLEU [95% interval], p.", '',
      '| variant | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |',
      '|---|' + '---|' * len(seeds)]
  for name, by_seed in tests.items():
    cells = []
    for s in seeds:
      t = by_seed.get(s)
      cells.append('–' if t is None else f"{t['delta']:+.2f} [{t['delta_low']:+.2f}, "
                   f"{t['delta_high']:+.2f}], p={t['p_value']:.3f}")
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return lines


def _claim_lines(groups: dict[str, list[dict]], tests: dict[str, dict[int, dict]]
                 ) -> list[str]:
  lines = []
  for claim in LITERATURE:
    deltas = _deltas(groups, claim.variant, claim.measure)
    if not deltas:
      continue
    if claim.measure == 'bleu':
      by_seed = tests.get(claim.variant, {})
      p_values = [by_seed[s]['p_value'] for s in sorted(by_seed)]
      if len(p_values) < len(deltas):  # No hypotheses to resample: the rule cannot pass.
        p_values = [1.0] * len(deltas)
      evidence = f", bootstrap p {', '.join(f'{p:.3f}' for p in p_values)}"
    else:
      p_values, evidence = [], ''
    verdict = significance.verdict(claim.sign, deltas, p_values)
    lines.append(f'- {claim.text}: {MEASURE_NAMES[claim.measure]} of {claim.variant} minus '
                 f"the baseline's, {_fmt(deltas, 3)} over {len(deltas)} seeds{evidence} — "
                 f'**{verdict}**.')
  return lines


def _lr_grid(experiment: workdir_lib.ExperimentDir,
            names: Sequence[str]) -> dict[tuple[str, bool], list]:
  """{(variant, warmup): [(peak rate, final validation loss, status)]} of the grid.

  status: 'diverged' (stopped on NaN/Inf losses), 'collapsed' (finite losses, test BLEU
  below COLLAPSED_BLEU) or 'trained'.
  """
  points = {}
  for name, runs in _group(experiment, names).items():
    for run in runs:
      config = run['config']
      variant = os.path.basename(name).split('_lr')[0]
      key = (variant, bool(config.get('warmup_steps')))
      status = ('diverged' if run['diverged'] else
                'collapsed' if run['bleu'] < COLLAPSED_BLEU else 'trained')
      points.setdefault(key, []).append((config['learning_rate'], run['final_eval_loss'], status))
  return {key: sorted(value) for key, value in points.items()}


def _lr_grid_lines(points: dict[tuple[str, bool], list], plot_dir: str) -> list[str]:
  if not points:
    return []
  rates = sorted({lr for pts in points.values() for lr, _, _ in pts})
  cell = lambda loss, status: {'diverged': 'diverged', 'collapsed': f'{loss:.3f} (collapsed)'
                               }.get(status, f'{loss:.3f}')
  lines = ['## Learning-rate sensitivity', '',
           'Final validation loss after a short run (one seed), by peak learning rate, with and '
           'without warm-up; "diverged": stopped on NaN/Inf losses; "collapsed": finite losses '
           f'but test BLEU below {COLLAPSED_BLEU:g}, the same few strings whatever the source.',
           '', '| variant | warm-up | ' + ' | '.join(f'{lr:.2g}' for lr in rates) + ' |',
           '|---|---|' + '---|' * len(rates)]
  for (variant, warmup), pts in sorted(points.items()):
    found = {lr: cell(loss, status) for lr, loss, status in pts}
    lines.append(f"| {variant} | {'yes' if warmup else 'no'} | " +
                 ' | '.join(found.get(lr, '–') for lr in rates) + ' |')
  lines.append('')
  for warmup in (True, False):
    path = plots.plot_lr_sensitivity(
        {variant: pts for (variant, w), pts in points.items() if w == warmup},
        os.path.join(plot_dir, f"lr_sensitivity_{'warmup' if warmup else 'no_warmup'}.png"),
        title=f"Final validation loss, {'with' if warmup else 'without'} warm-up")
    if path:
      lines.append(f'![learning-rate sensitivity](plots/{os.path.basename(path)})')
  lines += ['', _lr_reading(points), '']
  return lines


def _lr_reading(points: dict[tuple[str, bool], list]) -> str:
  """Per variant and warm-up: the rates it trained at, and how far its loss moved over them."""
  parts = []
  for (variant, warmup), pts in sorted(points.items()):
    trained = [(lr, loss) for lr, loss, status in pts if status == 'trained']
    what = (f"{variant} {'with' if warmup else 'without'} warm-up trained at "
            f'{len(trained)} of {len(pts)} rates')
    for status in ('collapsed', 'diverged'):
      failed = [f'{lr:.2g}' for lr, _, s in pts if s == status]
      if failed:
        what += f" ({status} at {', '.join(failed)})"
    if trained:
      best_rate, best_loss = min(trained, key=lambda t: t[1])
      what += (f', final loss {best_loss:.3f} at best (rate {best_rate:.2g}) to '
               f'{max(loss for _, loss in trained):.3f} at worst')
    parts.append(what)
  return ('One seed, so the grid is read as description, not by the verdict rule: ' +
          '; '.join(parts) + '.')


def _layer_norms_at(rows: Sequence[dict], step: int) -> dict[str, float]:
  """The per-layer gradient norms of the diagnostics row nearest after `step`."""
  candidates = [row for row in rows if row['step'] >= step and any(
      k.startswith('grad_norm/') for k in row)]
  if not candidates:
    return {}
  row = candidates[0]
  return {k[len('grad_norm/'):]: v for k, v in row.items() if k.startswith('grad_norm/')}


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


def _plots(groups: dict[str, list[dict]], plot_dir: str) -> list[tuple[str, Optional[str]]]:
  seeds = {name: [r['rows'] for r in runs] for name, runs in groups.items() if runs}
  made = [
      ('Validation loss', plots.plot_seed_bands(
          seeds, 'eval/loss', os.path.join(plot_dir, 'eval_loss.png'),
          title='Validation loss (mean over seeds, ±1 std)', ylabel='cross-entropy')),
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
  norm_runs = {n: groups[n][0] for n in ('baseline', 'pre_ln', 'deep_norm') if groups.get(n)}
  if norm_runs:
    warmup = next(iter(norm_runs.values()))['config'].get('warmup_steps', 0)
    norms = {}
    for name, run in norm_runs.items():
      norms[f'{name} at init'] = _layer_norms_at(run['rows'], 1)
      norms[f'{name} after warm-up'] = _layer_norms_at(run['rows'], warmup + 1)
    norms = {k: v for k, v in norms.items() if v}
    if norms:
      made.append(('Per-layer gradient norms (Xiong et al. 2020, Fig. 3)', plots.plot_layer_norms(
          norms, os.path.join(plot_dir, 'layer_grad_norms.png'),
          title='Per-layer gradient norms at initialization and after warm-up')))
  return made


def _learner_runs(experiment: workdir_lib.ExperimentDir) -> dict[str, dict]:
  """{'no_positions': run, 'all_pairs': run} of the finished learner runs (seed 0)."""
  runs = {}
  for name in ('no_positions', 'all_pairs'):
    run = experiment.run(f'{experiment.LEARNER}/{name}')
    if run.exists() and (loaded := _load_run(run))['finished']:
      runs[name] = loaded
  return runs


def write_report(experiment_dir: str, *, variants: Sequence[str],
                 lr_grid: Sequence[str] = ()) -> str:
  """Writes REPORT.md and plots into `experiment_dir`; returns the report's path."""
  experiment = workdir_lib.ExperimentDir(experiment_dir)
  groups = _group(experiment, variants)
  grid_groups = _group(experiment, lr_grid)
  code_version = check_one_code_version({**groups, **grid_groups})
  check_one_vocabulary({**groups, **grid_groups})
  finished = [r for runs in groups.values() for r in runs if not r['diverged']]
  first_eval = min((int(plots.series(r['rows'], 'eval/loss')[0][0]) for r in finished
                    if len(plots.series(r['rows'], 'eval/loss')[0])), default=0)
  references_path = experiment.file(experiment.REFERENCES)
  references = _read_lines(references_path) if os.path.exists(references_path) else None
  tests = _bootstrap(groups, references)

  lines = ['# The study: normalization and regularization in a fr→en Transformer', '']
  config = next((r['config'] for r in finished if r['config']), None)
  if config:
    lines += [f"Scale: dataset `{config['dataset_name']}`, d_model {config['model']['emb_dim']}, "
              f"{config['model']['num_layers']}+{config['model']['num_layers']} layers, "
              f"{config['num_train_steps']} steps, {config['lr_schedule']} schedule with "
              f"{config['warmup_steps']} warm-up steps. Seeds per variant: up to "
              f"{max(len(runs) for runs in groups.values())}. Code version {code_version} "
              "(provenance.code_version: the training code and library versions; every run "
              "has it).", '']
  lines += _regime_lines(groups)
  lines += ['## The variants', ''] + _variant_table(groups, first_eval)
  extra = _checkpoint_and_year_table(groups)
  if extra:
    lines += [''] + extra
  signatures = {r['bleu_signature'] for r in finished if r['bleu_signature']}
  if signatures:
    lines += ['', f"BLEU: sacreBLEU `{' / '.join(sorted(signatures))}`, beam search on the test "
              'split with the best-validation-BLEU checkpoint.']
  if tests:
    lines += [''] + _bootstrap_table(tests)

  plot_dir = experiment.file(experiment.PLOTS)
  os.makedirs(plot_dir, exist_ok=True)
  lines += [''] + _lr_grid_lines(_lr_grid(experiment, lr_grid), plot_dir)
  lines += ['## Plots', '']
  lines += [f'![{title}]({experiment.PLOTS}/{os.path.basename(path)})'
            for title, path in _plots(groups, plot_dir) if path]

  lines += learner_report.lines(experiment, groups, _learner_runs(experiment))
  lines += ['', '## Reading', '', significance.VERDICT_RULE, '']
  lines += _claim_lines(groups, tests)
  if max((len(runs) for runs in groups.values()), default=0) < 2:
    lines.append('- One seed per variant: every verdict is at most inconclusive (the rule needs '
                 'the spread over seeds); run with `--seeds=3`.')
  path = experiment.file(experiment.REPORT)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path
