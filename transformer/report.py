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
from transformer import plots
from transformer import report_grid
from transformer import report_regime
from transformer import report_tables
from transformer import run_records
from transformer import significance
from transformer import study_plan
from transformer import workdir as workdir_lib

# The learner section reads runs as the rest of the report does.
_load_run = run_records.load_run
_group = run_records.group
_SEED_MEASURES = ('early_eval_loss', 'eval_loss_at_peak', 'gap_at_peak')


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
  for measure in _SEED_MEASURES:
    values = {name: [r[measure] for r in runs if not r['diverged'] and not math.isnan(r[measure])]
              for name, runs in groups.items()}
    compared = significance.bootstrap_seeds({k: v for k, v in values.items() if v})
    for name, estimate in compared.deltas.items():
      deltas.setdefault(name, {})[measure] = estimate
  return deltas


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


def _learner_runs(experiment: workdir_lib.ExperimentDir) -> dict[str, dict]:
  """{'no_positions': run, 'all_pairs': run} of the finished learner runs (seed 0)."""
  runs = {}
  for name in ('no_positions', 'all_pairs'):
    run = experiment.run(f'{experiment.LEARNER}/{name}')
    if run.exists() and (loaded := _load_run(run))['finished']:
      runs[name] = loaded
  return runs


def _share(value: float, uniform: float) -> str:
  """'0.42 (uniform: 0.20, 2.1×)': an attention weight against the uniform one."""
  return f'{value:.2f} (uniform {uniform:.2f}, {value / uniform:.1f}×)'


def _attention_lines(attention: dict, candidates: int,
                     experiment: workdir_lib.ExperimentDir) -> list[str]:
  run = os.path.relpath(attention['workdir'], experiment.path)
  maps = os.path.join(experiment.LEARNER, experiment.LEARNER_ATTENTION)
  layers = len(next(iter(attention['entropy_by_layer'].values())))
  lines = [
      '### What queries, keys and values do', '',
      f"Each position's query is scored against every key; the softmax of those scores (one "
      f"row of a map) weighs the values that the position reads. Read from `{run}` (the "
      f"finished seed-0 run with the best test BLEU, step {attention['step']}): "
      f"“{attention['sentence']}” → “{attention['translation']}”. How far the rows are "
      'from uniform, as their entropy over log(keys) (1: uniform, 0: one key each; the mean '
      'of every head and row):', '',
      '| attention | ' + ' | '.join(f'layer {i}' for i in range(layers)) + ' |',
      '|---|' + '---|' * layers]
  for kind, entropies in attention['entropy_by_layer'].items():
    lines.append(f'| {kind} | ' + ' | '.join(f'{e:.2f}' for e in entropies) + ' |')
  last = layers - 1
  lines += [''] + [f'![{kind}]({maps}/{kind}_layer{last}_head0.png)'
                   for kind in ('encoder_self', 'decoder_self', 'cross')]
  lines += ['', f"(Last layer, head 0; all {attention['maps']} maps are in `{maps}/`.)",
            '', "### Does it attend to the verb when it translates the verb's object?", '']
  if 'object_output' not in attention:
    return lines + [f'The words "{attention["verb"]}" and "{attention["object"]}" are not both '
                    'found in the pieces of the sentence: not measured.', '']
  lines.append(
      _sentence_choice(attention, candidates) +
      _object_and_verb_outputs(attention) + " In the last layer (heads' mean), the "
      f"cross-attention row that writes `{attention['object_output']}` (labelled "
      f"`{attention['object_row_label']}`, its input, in the maps) puts "
      f"{_share(attention['object_cross_on_object'], attention['uniform_cross_on_object'])} "
      f"on the object and "
      f"{_share(attention['object_cross_on_verb'], attention['uniform_cross_on_verb'])} on the "
      'verb.' + (
          f" Its decoder self-attention puts "
          f"{_share(attention['object_self_on_verb_output'], attention['uniform_self'])} on "
          f"the verb's translation `{attention['verb_output']}`."
          if 'object_self_on_verb_output' in attention else
          " No output comes before the object's, so the decoder's self-attention toward the "
          "verb's translation is not measured."))
  return lines + ['']


def _object_and_verb_outputs(attention: dict) -> str:
  """Which outputs stand for the object and the verb, and how each was found."""
  def found(role: str, french: str, english: str) -> str:
    output = f"`{attention[role + '_output']}`"
    if attention[role + '_output_by'] == 'word':
      return f"the first {output} of the output (“{english}”)"
    return (f"{output}, the output whose cross-attention is most on “{french}” (no “{english}” "
            'in the output)')
  text = (" The object's translation is "
          + found('object', attention['object'], attention['english_object']))
  if 'verb_output' in attention:
    text += ("; the verb's, among the outputs before it, "
             + found('verb', attention['verb'], attention['english_verb']))
  return text + '.'


def _sentence_choice(attention: dict, candidates: int) -> str:
  """Why this sentence: the first candidate whose translation has its object, or none did."""
  tried = '; '.join(f"“{t['sentence']}” → “{t['translation']}”" for t in attention['tried'])
  if attention['translated_object']:
    return (f"“{attention['sentence']}” is the first of {candidates} candidate "
            f"sentences whose translation has the object's English word "
            f"“{attention['english_object']}” (tried: {tried}).")
  return (f"None of the {candidates} candidate sentences' translations has its "
          f"object's English word (tried: {tried}), so these figures come from a model that "
          f"does not translate “{attention['sentence']}”: read them as such.")


def _word_order_lines(order: dict, sentences: Sequence[str], runs: dict[str, dict],
                      baseline: Optional[dict]) -> list[str]:
  lines = ['### How is word order known?', '',
           "Self-attention alone is blind to order: permute the source and the encoder's "
           'outputs are permuted the same way, and cross-attention sums over them. The '
           'sinusoidal positions added to the embeddings are all the model knows of order. '
           'Two sentences with the same words, greedy translations:', '',
           '| model | positions | ' + ' | '.join(f'"{s}"' for s in sentences) +
           ' | one translation for both? |',
           '|---|---|' + '---|' * len(sentences) + '---|']
  for name, out in order.items():
    lines.append(f"| {name} | {out['positions']} | " +
                 ' | '.join(out['translations']) + f" | {'yes' if out['same'] else 'no'} |")
  if 'no_positions' in runs and baseline:
    run = runs['no_positions']
    lines += ['', f"Without positions the best validation loss is {run['best_eval_loss']:.3f} "
              f"against the baseline's {baseline['best_eval_loss']:.3f} (seed 0), and test "
              f"BLEU {run['bleu']:.2f} against {baseline['bleu']:.2f}."]
  return lines + ['']


def _batch_norm_lines(stats: dict, groups: dict[str, list[dict]]) -> list[str]:
  sizes = stats['batch_sizes']
  lines = [
      '### Why LayerNorm rather than BatchNorm?', '',
      'LayerNorm normalizes each token over its own features; BatchNorm over the batch, so a '
      "sentence's output depends on the sentences it is batched with, and on padding if that "
      f"is counted. Measured on this model's input vectors of {stats['sentences']} validation "
      f"sentences ({stats['features']} features), following the first: the relative change of "
      "its normalized vectors against the output with every sentence's statistics (BatchNorm, "
      "what its running averages estimate at test time) or alone (LayerNorm), mean of "
      f"{stats['draws']} random batches:", '',
      '| sentences per batch | ' + ' | '.join(map(str, sizes)) + ' |',
      '|---|' + '---|' * len(sizes),
      '| BatchNorm | ' + ' | '.join(f'{v:.3f}' for v in stats['batch_norm']) + ' |',
      '| LayerNorm | ' + ' | '.join(f'{v:.1e}' for v in stats['layer_norm']) + ' |', '',
      f"Padding: in a batch of {stats['padding']['batch']} padded to its longest sentence "
      f"({stats['padding']['pad_fraction']:.0%} pads), counting the pads in BatchNorm's "
      f"statistics changes the followed sentence's output by "
      f"{stats['padding']['unmasked_vs_masked']:.3f} (relative to its output with the pads "
      "masked, as this project's BatchNorm masks them)."]
  if groups.get('batch_norm') and groups.get('baseline'):
    bleu = lambda runs: _fmt([r['bleu'] for r in runs if not r['diverged']])
    lines.append(f"In training, the batch_norm variant reaches test BLEU "
                 f"{bleu(groups['batch_norm'])} against the baseline's {bleu(groups['baseline'])}"
                 ' (the variant table has the rest).')
  return lines + ['']


def _memory_lines(memory: dict) -> list[str]:
  mib = lambda b: f'{b / 2**20:.3f}'
  lines = ['### Why does memory grow with the length of the text?', '',
           'Decoding keeps K and V of every source token and of every output so far, each '
           'decoder layer (the KV cache): linear in length. A full pass (training, or decoding '
           'without a cache) holds one weight per query-key pair, each head and layer: '
           'quadratic. Sizes of the arrays this model builds for one sentence whose source and '
           'output have the same length:', '',
           '| tokens | KV cache (MiB) | attention weights (MiB) |', '|---|---|---|']
  for n, cache, attention in zip(memory['lengths'], memory['cache_bytes'],
                                 memory['attention_bytes']):
    lines.append(f'| {n} | {mib(cache)} | {mib(attention)} |')
  first, last = memory['lengths'][0], memory['lengths'][-1]
  lines += ['', f"From {first} to {last} tokens ({last // first}× longer) the cache grows "
            f"{memory['cache_bytes'][-1] / memory['cache_bytes'][0]:.0f}× and the attention "
            f"weights {memory['attention_bytes'][-1] / memory['attention_bytes'][0]:.0f}×.", '',
            f"![memory]({workdir_lib.ExperimentDir.LEARNER}/{memory['plot']})"]
  return lines + ['']


def _learner_lines(experiment: workdir_lib.ExperimentDir,
                   groups: dict[str, list[dict]]) -> list[str]:
  """The questions a learner asks, from learner.measure's JSON and the learner runs."""
  path = experiment.file(experiment.LEARNER, experiment.LEARNER_RESULT)
  runs = _learner_runs(experiment)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    measured = json.load(f)
  baseline = (groups.get('baseline') or [None])[0]
  lines = ['', '## Questions a learner asks', '']
  lines += _attention_lines(measured['attention'], len(measured['verb_sentences']), experiment)
  lines += _word_order_lines(measured['word_order'], measured['order_sentences'], runs,
                             baseline)
  lines += _batch_norm_lines(measured['batch_statistics'], groups)
  lines += _memory_lines(measured['memory'])
  if 'all_pairs' in runs and baseline:
    run = runs['all_pairs']
    lines += ['### More data or more regularization?', '',
              f"The baseline on every training pair (seed 0, same steps) reaches test BLEU "
              f"{run['bleu']:.2f} and best validation loss {run['best_eval_loss']:.3f}, against "
              f"{baseline['bleu']:.2f} and {baseline['best_eval_loss']:.3f} on the study's "
              'subset.', '']
  return lines




def write_report(experiment_dir: str, *,
                 variants: Sequence[str] = study_plan.STUDY_VARIANTS) -> str:
  """Writes REPORT.md and plots into `experiment_dir`; returns the report's path.

  The grid, pilot, reruns, retrains and learner runs are found where study_plan puts them.
  """
  experiment = workdir_lib.ExperimentDir(experiment_dir)
  groups = _group(experiment, variants)
  grid_names = [study_plan.grid_name(v, f) for v in study_plan.NORM_VARIANTS
                for f in study_plan.LR_FACTORS]
  learner = _group(experiment, list(study_plan.LEARNER_RUNS))
  checked = {**groups, **_group(experiment, grid_names), **learner}
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
  lines += report_regime.lines(report_regime.pilot_runs(experiment), groups.get('baseline', []),
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
  lines += [''] + report_tables.beside_bleu_table(groups, references, speed)
  extra = _checkpoint_and_year_table(groups)
  if extra:
    lines += [''] + extra

  layers = config['model']['num_layers'] if config else 0
  verdicts = claims_lib.judge(claims_lib.CLAIMS, _claim_deltas(groups, bleu), layers)
  lines += ['', '## Claims from the literature', ''] + claims_lib.lines(verdicts) + ['']
  lines += report_tables.rerun_lines(experiment, groups, references)
  lines += report_tables.retrain_lines(experiment)

  lines += ['## Plots', '']
  lines += [f'![{title}]({experiment.PLOTS}/{os.path.basename(path)})'
            for title, path in _plots(groups, plot_dir) if path]
  lines += ['', 'Gradient norms are those of each layer\'s parameters together (the root of the '
            'sum of squares of its blocks\' norms), of seed 0; a norm of exactly 0 has no '
            'place on a log axis and is left out.']

  lines += _learner_lines(experiment, groups)
  path = experiment.file(experiment.REPORT)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path
