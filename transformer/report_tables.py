"""The report's tables of the study runs: test BLEU with intervals over both noises, what a
reader needs beside BLEU (looping, length, source use, where runs peaked and stopped,
compute), the same-seed reruns and the retrains. No JAX.
"""

import json
import math
import os
from typing import Optional

from transformer import output_stats
from transformer import run_records
from transformer import significance
from transformer import study_plan
from transformer import workdir as workdir_lib


def _fmt(values, digits: int = 2) -> str:
  return significance.format_mean_std([v for v in values if not math.isnan(v)], digits)


def bleu_table(groups: dict[str, list[dict]], bleu: Optional[significance.OverSeeds],
               rates: dict[str, str]) -> list[str]:
  """A row per variant: its seeds, rate, mean test BLEU [95%], Δ to the baseline [95%], p."""
  lines = [
      'Test BLEU: the mean over seeds with a 95% interval from a bootstrap that resamples both '
      'the seeds and the test sentences (significance.bootstrap_bleu, '
      f'{significance.BOOTSTRAP_SAMPLES:,} resamples; one draw of sentences for every '
      'variant, so differences are paired over sentences). p: two-sided, for the difference '
      'to the baseline, before any correction (the claims below correct theirs). rate: the '
      'peak learning rate the seeds trained at, as a factor of the grid\'s 1×.', '',
      '| variant | seeds | rate | test BLEU [95%] | ΔBLEU [95%] | p | chrF | params |',
      '|---|---|---|---|---|---|---|---|']
  for name, runs in groups.items():
    if not runs:
      continue
    good = [r for r in runs if not r['diverged']]
    diverged = len(runs) - len(good)
    mean = bleu.means.get(name) if bleu else None
    delta = bleu.deltas.get(name) if bleu else None
    mean_cell = (f'{mean.value:.2f} [{mean.low:.2f}, {mean.high:.2f}]' if mean else
                 _fmt([r['bleu'] for r in good]))
    lines.append(
        f"| {name} | {len(runs)}{f' ({diverged} diverged)' if diverged else ''} "
        f"| {rates.get(name, '–')} | {mean_cell} | {delta if delta else '–'} "
        f"| {f'{delta.p_value:.3f}' if delta else '–'} | {_fmt([r['chrf'] for r in good])} "
        f"| {runs[0]['params']:,} |")
  return lines


def _output_stats(run: dict, references: Optional[list[str]]) -> dict:
  """Repetition, length ratio and source use of a run's test translations (NaN without)."""
  if not run['hypotheses'] or not references:
    return {'repeats': math.nan, 'ratio': math.nan, 'gain': math.nan, 'distinct': math.nan}
  hypotheses = run_records.hypotheses(run)
  use = output_stats.source_use(hypotheses, references)
  return {'repeats': 100 * output_stats.repetition_rate(hypotheses),
          'ratio': output_stats.length_ratio(hypotheses, references),
          'gain': use['source_gain'], 'distinct': 100 * use['distinct']}


def beside_bleu_table(groups: dict[str, list[dict]], references: Optional[list[str]],
                      speed: Optional[dict], code_version: Optional[str] = None) -> list[str]:
  """A row per variant of what BLEU does not show, mean ± std over seeds.

  The speed is benchmarks.variant_speed's; a speed timed on other training code than the
  runs' (`code_version`) is said to be, since a change to the step changes its speed.
  """
  lines = [
      'Beside BLEU (mean ± std over seeds): looping, the share of test outputs that repeat a '
      f'{output_stats.REPEAT_NGRAM}-gram; length, sacreBLEU\'s output/reference length ratio; '
      'source use, test BLEU minus BLEU against the references shuffled (near 0: the outputs '
      'ignore the source) and the share of distinct outputs; the step where validation BLEU '
      'peaked (the checkpoint tested) and where the run stopped. Compute: steps/s of the '
      'variant measured alone on one machine (speed.json; R-Drop\'s two passes are in its '
      'step), GFLOP per step, and the time and compute to the run\'s stopping step.', '',
      '| variant | repeats (%) | length ratio | BLEU − shuffled | distinct (%) | peak step '
      '| stopped at | steps/s | GFLOP/step | time to stop (min) | PFLOP to stop |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for name, runs in groups.items():
    good = [r for r in runs if not r['diverged']]
    if not good:
      continue
    stats = [_output_stats(r, references) for r in good]
    column = lambda key: [s[key] for s in stats]
    stops = [r['stop_step'] for r in good]
    measured = (speed or {}).get(name)
    if measured:
      per_second, gflop = measured['steps_per_second'], measured['gflop_per_step']
      compute = (f'| {per_second:.2f} | {gflop:.1f} | {_fmt([s / per_second / 60 for s in stops], 1)} '
                 f'| {_fmt([s * gflop / 1e6 for s in stops], 3)} |')
    else:
      compute = '| not measured | not measured | not measured | not measured |'
    lines.append(
        f"| {name} | {_fmt(column('repeats'), 1)} | {_fmt(column('ratio'), 3)} "
        f"| {_fmt(column('gain'))} | {_fmt(column('distinct'), 1)} "
        f"| {_fmt([r['peak_step'] for r in good], 0)} | {_fmt(stops, 0)} " + compute)
  machines = sorted({m['machine'] for m in (speed or {}).values()})
  if machines:
    lines += ['', f"Speed measured on: {', '.join(machines)}."]
  timed_by = sorted({m.get('code_version', 'unrecorded') for m in (speed or {}).values()})
  if code_version and timed_by and timed_by != [code_version]:
    lines[-1] += (f" It was timed on training code {', '.join(timed_by)}, not the runs' "
                  f'{code_version}: run `python -m benchmarks.variant_speed` on the runs\' code '
                  'to time their step.')
  return lines


def rerun_lines(experiment: workdir_lib.ExperimentDir, groups: dict[str, list[dict]],
                references: Optional[list[str]]) -> list[str]:
  """Each same-seed rerun against its original: Δ BLEU and sacreBLEU's per-seed p-value."""
  rows = []
  for variant, seed in study_plan.RERUNS:
    rerun = experiment.run(study_plan.rerun_name(variant), seed)
    original = next((r for r in groups.get(variant, []) if run_records.seed_of(r) == seed),
                    None)
    if not (rerun.exists() and original and original['hypotheses'] and references):
      continue
    again = run_records.load_run(rerun)
    if not again['finished'] or not again['hypotheses']:
      continue
    tested = significance.paired_bootstrap(run_records.hypotheses(original),
                                           {'rerun': run_records.hypotheses(again)},
                                           references)['rerun']
    rows.append((f'{variant}/seed_{seed}', original['bleu'], again['bleu'], tested))
  lines = ['## Same-seed reruns', '']
  if not rows:
    return lines + ['No same-seed rerun has finished yet.', '']
  significant = sum(t['p_value'] < significance.ALPHA for *_, t in rows)
  lines += [
      'Each run below was trained a second time with the same config and seed: whatever '
      'separates the two is noise of training itself, not of the variant or the seed. '
      'p: sacreBLEU\'s paired bootstrap on the test sentences, the test a single-seed '
      'comparison would use.', '',
      '| run | original BLEU | rerun BLEU | ΔBLEU [95%, test resampling] | sacreBLEU p |',
      '|---|---|---|---|---|']
  for name, before, after, t in rows:
    lines.append(f"| {name} | {before:.2f} | {after:.2f} | {t['delta']:+.2f} "
                 f"[{t['delta_low']:+.2f}, {t['delta_high']:+.2f}] | {t['p_value']:.3f} |")
  lines += ['', f'{significant} of {len(rows)} reruns "differ significantly" (p < '
            f'{significance.ALPHA}) from a run of the same config and seed: a p-value over the '
            'test sentences alone counts training noise as a difference. The claims above '
            'resample the seeds as well.', '']
  return lines


def retrain_lines(experiment: workdir_lib.ExperimentDir) -> list[str]:
  """Every run trained again after a first result, from retrains.json: which, why, and the
  result it replaced."""
  path = experiment.file(experiment.RETRAINS)
  lines = ['## Retrains', '']
  if not os.path.exists(path):
    return lines + ['None: no run of this study was trained a second time (no retrains.json).',
                    '']
  with open(path) as f:
    retrains = json.load(f)
  if not retrains:
    return lines + ['None (retrains.json lists no run).', '']
  lines += ['Runs trained again after a first result, and why; the report uses the new '
            'result.', '', '| run | why | previous test BLEU | test BLEU now |', '|---|---|---|---|']
  for entry in retrains:
    name = entry['run']
    now = run_records.load_run(workdir_lib.Workdir(experiment.file(name)))
    previous = entry['previous'].get('bleu', math.nan)
    lines.append(f"| {name} | {entry['why']} | {previous:.2f} | {now['bleu']:.2f} |")
  return lines + ['']


def compute_lines(stages: dict[str, list[dict]]) -> list[str]:
  """What the study's runs cost: each stage's training time, from the runs' own clocks.

  `stages` maps a stage's name to its runs' records (run_records.load_run). A run's
  'time/wall_seconds' covers its training loop (evaluations included) over every sitting it
  took; runs that trained side by side each count their own time, so the sum is the runs'
  time, not the machine's.
  """
  hours = {name: sum(r['wall_seconds'] for r in runs if not math.isnan(r['wall_seconds'])) / 3600
           for name, runs in stages.items() if runs}
  if not hours:
    return []
  parts = '; '.join(f'{name}: {len(stages[name])} runs, {h:.1f} h' for name, h in hours.items())
  return [f'Compute: the runs trained for {sum(hours.values()):.1f} h in all ({parts}), each '
          "run's training loop by its own clock, evaluations included, over all its sittings. "
          'Runs that shared the machine (the study trains two at a time on its 2-core CPU) '
          'each count their own time: this is the runs\' time, not the machine\'s.', '']
