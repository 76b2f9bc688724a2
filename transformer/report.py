"""REPORT.md for a study directory: the variant table, curves, and a reading of them.

Every number in the report is computed here from files the runs wrote (metrics.jsonl,
test_result.json, config.json); nothing is typed in by hand. The sentences that compare
with the literature are computed too, so they say "agrees" only when the numbers do.
"""

import glob
import json
import math
import os
import statistics
from typing import Sequence


from transformer import cli
from transformer import metrics as metrics_lib
from transformer import plots

ATTENTION_DIR = os.path.join('plots', 'attention')  # Written by study.write_attention_maps.

LITERATURE = {
    'pre_ln': ('Pre-LN trains faster early on (Xiong et al. 2020)',
               lambda r, b: r['early_eval_loss'] < b['early_eval_loss']),
    'batch_norm': ('BatchNorm translates worse than LayerNorm (Shen et al. 2020)',
                   lambda r, b: r['bleu'] < b['bleu']),
    'no_dropout': ('Without dropout a small corpus overfits: lower BLEU (Vaswani et al. 2017)',
                   lambda r, b: r['bleu'] < b['bleu']),
    'label_smoothing': ('Label smoothing raises BLEU (Vaswani et al. 2017; Müller et al. 2019)',
                        lambda r, b: r['bleu'] > b['bleu']),
    'r_drop': ('R-Drop raises BLEU (Liang et al. 2021)', lambda r, b: r['bleu'] > b['bleu']),
    'rezero': ('ReZero trains faster early on than post-LN (Bachlechner et al. 2020)',
               lambda r, b: r['early_eval_loss'] < b['early_eval_loss']),
}


def _load_run(run_dir: str) -> dict:
  rows = metrics_lib.read_metrics(run_dir)
  result_path = os.path.join(run_dir, 'test_result.json')
  result = json.load(open(result_path)) if os.path.exists(result_path) else {}
  _, eval_loss = plots.series(rows, 'eval/loss')
  params = [row['params/count'] for row in rows if 'params/count' in row]
  walls = [row['time/wall_seconds'] for row in rows if 'time/wall_seconds' in row]
  skipped = [row['eval/nonfinite_total'] for row in rows if 'eval/nonfinite_total' in row]
  return {
      'dir': run_dir, 'rows': rows, 'diverged': result.get('diverged', False),
      'bleu': result.get('bleu', math.nan), 'chrf': result.get('chrf', math.nan),
      'bleu_signature': result.get('bleu_signature', ''),
      'best_eval_loss': float(eval_loss.min()) if len(eval_loss) else math.nan,
      'early_eval_loss': float(eval_loss[0]) if len(eval_loss) else math.nan,
      'params': int(params[0]) if params else 0,
      'wall_seconds': walls[-1] if walls else math.nan,
      'skipped': int(skipped[-1]) if skipped else 0,
      'average': result.get('average', {}), 'test_sets': result.get('test_sets', {}),
      'code_version': result.get('code_version', 'unrecorded'),
      'finished': bool(result),
  }


def check_one_code_version(groups: dict[str, list[dict]]) -> str:
  """The code version of every finished run; a mix of versions is refused."""
  versions = {}
  for runs in groups.values():
    for run in runs:
      if run['finished']:
        versions.setdefault(run['code_version'], []).append(run['dir'])
  if len(versions) > 1:
    listing = '; '.join(f'{version}: {len(dirs)} runs (e.g. {dirs[0]})'
                        for version, dirs in sorted(versions.items()))
    raise cli.UserError('The runs were trained by different code, so one table would compare '
                        f'code as well as variants: {listing}. Retrain the older runs in a new '
                        'experiment_dir.')
  return next(iter(versions), 'unrecorded')


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


def _mean_std(values: Sequence[float]) -> str:
  values = [v for v in values if not math.isnan(v)]
  if not values:
    return 'n/a'
  if len(values) == 1:
    return f'{values[0]:.2f}'
  return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def _group(experiment_dir: str, names: Sequence[str]) -> dict[str, list[dict]]:
  return {name: [_load_run(d) for d in sorted(glob.glob(os.path.join(experiment_dir, name,
                                                                      'seed_*')))]
          for name in names}


def _layer_norms_at(rows: Sequence[dict], step: int) -> dict[str, float]:
  """The per-layer gradient norms of the diagnostics row nearest after `step`."""
  candidates = [row for row in rows if row['step'] >= step and any(
      k.startswith('grad_norm/') for k in row)]
  if not candidates:
    return {}
  row = candidates[0]
  return {k[len('grad_norm/'):]: v for k, v in row.items() if k.startswith('grad_norm/')}


def write_report(experiment_dir: str, *, variants: Sequence[str],
                 ablations: Sequence[str] = ()) -> str:
  """Writes REPORT.md and plots into `experiment_dir`; returns the report's path."""
  groups = _group(experiment_dir, list(variants) + list(ablations))
  code_version = check_one_code_version(groups)
  finished = [r for runs in groups.values() for r in runs if not r['diverged']]
  first_eval = min((int(plots.series(r['rows'], 'eval/loss')[0][0]) for r in finished
                    if len(plots.series(r['rows'], 'eval/loss')[0])), default=0)

  lines = ['# The study: normalization and regularization in a fr→en Transformer', '']
  config_path = glob.glob(os.path.join(experiment_dir, variants[0], 'seed_*', 'config.json'))
  if config_path:
    config = json.load(open(config_path[0]))
    lines += [f"Scale: dataset `{config['dataset_name']}`, d_model {config['model']['emb_dim']}, "
              f"{config['model']['num_layers']}+{config['model']['num_layers']} layers, "
              f"{config['num_train_steps']} steps, {config['lr_schedule']} schedule with "
              f"{config['warmup_steps']} warm-up steps. Seeds per variant: "
              f"{max(len(groups[v]) for v in variants)}. Code version {code_version} "
              "(provenance.code_version: the training code and library versions; every run "
              "has it).", '']
  lines += [
      f'Early loss: the validation loss at the first evaluation (step {first_eval}), a measure '
      'of how fast a variant starts; best loss: the lowest of all evaluations. Wall time is '
      "the training loop's own clock (evaluation included) on a machine other jobs may share: "
      'compare it across runs only roughly.', '',
      '| variant | test BLEU | chrF | best val loss | early val loss | wall time (min) '
      '| skipped steps | params |',
      '|---|---|---|---|---|---|---|---|']
  for name, runs in groups.items():
    if not runs:
      continue
    lines.append(
        f"| {name}{' (diverged)' if any(r['diverged'] for r in runs) else ''} "
        f"| {_mean_std([r['bleu'] for r in runs])} | {_mean_std([r['chrf'] for r in runs])} "
        f"| {_mean_std([r['best_eval_loss'] for r in runs])} "
        f"| {_mean_std([r['early_eval_loss'] for r in runs])} "
        f"| {_mean_std([r['wall_seconds'] / 60 for r in runs])} "
        f"| {sum(r['skipped'] for r in runs)} | {runs[0]['params']:,} |")
  extra = _checkpoint_and_year_table(groups)
  if extra:
    lines += [''] + extra
  signatures = {r['bleu_signature'] for r in finished if r['bleu_signature']}
  if signatures:
    lines += ['', f"BLEU: sacreBLEU `{' / '.join(sorted(signatures))}`, beam search on the test "
              'split with the best-validation-BLEU checkpoint.']

  plot_dir = os.path.join(experiment_dir, 'plots')
  os.makedirs(plot_dir, exist_ok=True)
  curves = {name: runs[0]['rows'] for name, runs in groups.items() if runs}
  made = [
      ('Validation loss', plots.plot_curves(curves, 'eval/loss',
                                            os.path.join(plot_dir, 'eval_loss.png'),
                                            title='Validation loss', ylabel='cross-entropy')),
      ('Validation BLEU (greedy)', plots.plot_curves(
          curves, 'eval/bleu', os.path.join(plot_dir, 'eval_bleu.png'),
          title='Validation BLEU (greedy)', ylabel='BLEU')),
      ('Training loss', plots.plot_curves(
          curves, 'train/loss', os.path.join(plot_dir, 'train_loss.png'),
          title='Training loss (moving average of 50 steps)', ylabel='cross-entropy',
          smoothing=50)),
  ]
  norm_runs = {n: groups[n][0] for n in ('baseline', 'pre_ln', 'deep_norm')
               if groups.get(n)}
  if norm_runs:
    warmup = json.load(open(os.path.join(next(iter(norm_runs.values()))['dir'],
                                         'config.json')))['warmup_steps']
    norms = {}
    for name, run in norm_runs.items():
      norms[f'{name} at init'] = _layer_norms_at(run['rows'], 1)
      norms[f'{name} after warm-up'] = _layer_norms_at(run['rows'], warmup + 1)
    made.append(('Per-layer gradient norms (Xiong et al. 2020, Fig. 3)', plots.plot_layer_norms(
        {k: v for k, v in norms.items() if v}, os.path.join(plot_dir, 'layer_grad_norms.png'),
        title='Per-layer gradient norms at initialization and after warm-up')))
  lines += ['', '## Plots', '']
  lines += [f'![{title}](plots/{os.path.basename(path)})' for title, path in made if path]

  attention = sorted(glob.glob(os.path.join(experiment_dir, ATTENTION_DIR, '*.png')))
  if attention:
    with open(os.path.join(experiment_dir, ATTENTION_DIR, 'sentence.txt')) as f:
      sentence = f.read().strip()
    last = max(int(p.rsplit('_layer', 1)[1].split('_')[0]) for p in attention)
    lines += ['', '### Attention of the baseline on one test sentence', '',
              f'"{sentence}" and its greedy translation; last layer, head 0, of each kind '
              f'(all {len(attention)} maps, every layer and head, are in '
              f'`{ATTENTION_DIR}/`).', '']
    lines += [f'![{kind} attention]({ATTENTION_DIR}/{kind}_layer{last}_head0.png)'
              for kind in ('encoder_self', 'decoder_self', 'cross')]

  lines += ['', '## Reading', '']
  baseline = groups.get('baseline', [None])[0] if groups.get('baseline') else None
  if baseline and not baseline['diverged']:
    for name, (claim, holds) in LITERATURE.items():
      runs = [r for r in groups.get(name, []) if not r['diverged']]
      if not runs:
        continue
      verdict = 'agrees' if holds(runs[0], baseline) else 'does not agree'
      lines.append(
          f"- {claim}: here {name} has BLEU {runs[0]['bleu']:.2f} vs the baseline's "
          f"{baseline['bleu']:.2f}, and early validation loss {runs[0]['early_eval_loss']:.3f} "
          f"vs {baseline['early_eval_loss']:.3f} — this {verdict}.")
  for name in ablations:
    for run in groups.get(name, []):
      outcome = ('diverged (NaN/Inf)' if run['diverged'] else
                 f"trained: best validation loss {run['best_eval_loss']:.3f}, "
                 f"test BLEU {run['bleu']:.2f}")
      lines.append(f'- Warm-up ablation, {name}: {outcome}.')
  seeds = max(len(runs) for runs in groups.values())
  if seeds < 2:
    lines.append('- One seed per variant: no error bars. Differences of a few tenths of BLEU '
                 'are within the seed-to-seed noise one would see with `--seeds=3`; read them '
                 'as hints, not findings.')
  path = os.path.join(experiment_dir, 'REPORT.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path
