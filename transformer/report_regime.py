"""The report's regime section: the pilot's curves that chose the regime, and whether every
baseline seed meets the conditions of a regime where variants end and translate.

The conditions (issue 35): the baseline's validation BLEU, the metric that picks the test
checkpoint, peaks before the last quarter of its budget (so a run ends by patience, not by
the budget); it translates (test BLEU >= MIN_TEST_BLEU, at most MAX_REPEATS of its outputs
loop); and a model without positions loses to it (word order is used). Each is printed as
holds / does not hold with its numbers. No JAX.
"""

import math
import os
from typing import Optional, Sequence

from transformer import output_stats
from transformer import plots
from transformer import run_records
from transformer import significance
from transformer import study_plan
from transformer import workdir as workdir_lib

# Of the budget (num_train_steps): validation BLEU's last improvement by more than the
# stopping rule's patience_min_delta must come before it.
PEAK_BEFORE = 0.75
MIN_TEST_BLEU = 8.0
MAX_REPEATS = 0.15  # Share of test outputs that repeat a 4-gram (output_stats).


def pilot_runs(experiment: workdir_lib.ExperimentDir) -> dict[str, dict]:
  """{pilot name: its record} of every pilot run that has logged something (seed 0)."""
  runs = {}
  for name in study_plan.PILOT_RUNS:
    run = experiment.run(name)
    if run.exists() and run.metrics():
      runs[name] = run_records.load_run(run)
  return runs


def _pilot_lines(pilots: dict[str, dict], plot_dir: str) -> list[str]:
  if not pilots:
    return ['No pilot runs in this folder (study.py --pilot trains them).', '']
  config = next(iter(pilots.values()))['config']
  out = ['The pilot: the baseline, seed 0, under the stopping rule (patience '
         f"{config.get('patience')} evaluations of validation BLEU, every "
         f"{config.get('eval_every_steps')} steps, within {config.get('num_train_steps'):,} "
         'steps) at candidate data sizes.', '',
         '| pilot | training pairs | best validation BLEU (step) | stopped at | test BLEU '
         '| test outputs repeating a 4-gram |',
         '|---|---|---|---|---|---|']
  for name, run in pilots.items():
    pairs = run['config'].get('max_train_pairs') or 'all'
    test = '–' if math.isnan(run['bleu']) else f"{run['bleu']:.2f}"
    repeats = (f'{100 * output_stats.repetition_rate(run_records.hypotheses(run)):.1f}%'
               if run['hypotheses'] else '–')
    stopped = (f"{run['stop_step']:,} of {run['budget']:,}" if run['finished'] else
               f"unfinished (step {run['stop_step']:,} of {run['budget']:,})")
    out.append(f"| {name} | {pairs} | {run['peak_eval_bleu']:.2f} ({run['peak_step']:,}) "
               f"| {stopped} | {test} | {repeats} |")
  path = plots.plot_panels_over_steps(
      {name: run['rows'] for name, run in pilots.items()},
      [('eval/bleu', 'validation BLEU (greedy)'), ('eval/loss', 'validation NLL')],
      os.path.join(plot_dir, 'pilot.png'), title='The pilot: the baseline by training pairs')
  if path:
    out += ['', f'![pilot]({os.path.basename(plot_dir)}/{os.path.basename(path)})']
  return out + ['']


def _check(text: str, holds: Optional[bool], numbers: str) -> str:
  verdict = 'not measured' if holds is None else 'holds' if holds else 'does not hold'
  return f'- {text}: {numbers} — **{verdict}**.'


def check_lines(baseline: Sequence[dict], no_positions: Sequence[dict],
                references: Optional[list[str]]) -> list[str]:
  """The four conditions on the baseline's seeds, each holds / does not hold / not measured."""
  runs = [r for r in baseline if not r['diverged']]
  if not runs:
    return ['- No finished baseline run: the regime is not checked yet.']
  peaks = ', '.join(f"{r['improved_step']:,} (highest at {r['peak_step']:,}) of {r['budget']:,}"
                    for r in runs)
  delta = runs[0]['config'].get('patience_min_delta', 0.0)
  out = [_check(f'Validation BLEU stops improving (by more than {delta:g} BLEU, the stopping '
                f'rule) before the last quarter of the budget ({PEAK_BEFORE:.0%}) in every '
                'baseline seed', all(r['improved_step'] < PEAK_BEFORE * r['budget'] for r in runs),
                f'last improvement at steps {peaks}')]
  out.append(_check(f'Test BLEU ≥ {MIN_TEST_BLEU:g} in every baseline seed',
                    all(r['bleu'] >= MIN_TEST_BLEU for r in runs),
                    'test BLEU ' + ', '.join(f"{r['bleu']:.2f}" for r in runs)))
  with_text = [r for r in runs if r['hypotheses']]
  repeats = [output_stats.repetition_rate(run_records.hypotheses(r)) for r in with_text]
  out.append(_check(f'At most {MAX_REPEATS:.0%} of test outputs repeat a '
                    f'{output_stats.REPEAT_NGRAM}-gram, in every baseline seed',
                    all(r <= MAX_REPEATS for r in repeats) if repeats else None,
                    ', '.join(f'{r:.1%}' for r in repeats) or 'no test translations'))
  positions = [r for r in no_positions if not r['diverged'] and r['hypotheses']]
  if references and positions and with_text:
    delta = significance.bootstrap_bleu(
        {'baseline': [run_records.hypotheses(r) for r in with_text],
         'no_positions': [run_records.hypotheses(r) for r in positions]},
        references).deltas['no_positions']
    out.append(_check('The model without positions loses to the baseline (bootstrap over '
                      'seeds and test sentences)',
                      delta.excludes_zero(-1) and delta.p_value < significance.ALPHA,
                      f'Δ test BLEU {delta}, p={delta.p_value:.3f} ({len(positions)} against '
                      f'{len(with_text)} seeds)'))
  else:
    out.append(_check('The model without positions loses to the baseline', None,
                      'no finished learner/no_positions run with test translations'))
  return out


def lines(pilots: dict[str, dict], baseline: Sequence[dict], no_positions: Sequence[dict],
          references: Optional[list[str]], plot_dir: str) -> list[str]:
  out = ['## The regime', ''] + _pilot_lines(pilots, plot_dir)
  config = next((r['config'] for r in baseline if r['config']), None)
  if config:
    out += [f"The study's runs train on {config.get('max_train_pairs') or 'all'} pairs of "
            f"`{config.get('dataset_name')}` for at most {config['num_train_steps']:,} steps, "
            f"stopped after {config.get('patience')} evaluations (every "
            f"{config.get('eval_every_steps')} steps) without a gain of more than "
            f"{config.get('patience_min_delta', 0.0):g} validation BLEU. "
            'Conditions on every baseline seed:', '']
  return out + check_lines(baseline, no_positions, references) + ['']
