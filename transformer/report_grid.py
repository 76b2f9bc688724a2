"""The learning-rate grid: each norm variant at study_plan.LR_FACTORS times its rate (extended
where the best is an edge: study_plan.grid_factors), judged on the validation split by
whether it trained a model that uses the source, and the rate chosen.

A run that keeps finite losses can still ignore its input and emit a few frequent strings;
BLEU alone scores that as a weak model (the first study called 7 such DeepNorm runs
"trained"). Here a run is judged by output_stats.source_use: BLEU against shuffled
references and the share of distinct outputs. No JAX.
"""

import math
import os
from typing import Optional

from transformer import output_stats
from transformer import plots
from transformer import run_records
from transformer import study_plan
from transformer import workdir as workdir_lib

STATUSES = ('trained', 'ignores the source', 'diverged', 'unfinished',
            'no validation translations')
_JUDGED = ('trained', 'ignores the source', 'diverged')


def grid_points(experiment: workdir_lib.ExperimentDir) -> dict[str, dict[float, dict]]:
  """{variant: {factor: point}} of every norm variant with a grid run.

  A point holds 'status' (STATUSES), 'learning_rate', and, for a run that did not diverge,
  'bleu' (validation BLEU as the run recorded it), 'shuffled_bleu', 'distinct' and
  'uses_source' (output_stats.source_use of its validation translations).
  """
  references_path = experiment.file(experiment.VALIDATION_REFERENCES)
  references = (run_records.read_lines(references_path)
                if os.path.exists(references_path) else None)
  points = {}
  for variant in study_plan.NORM_VARIANTS:
    found = {}
    for factor in study_plan.all_grid_factors():
      run = experiment.run(study_plan.grid_name(variant, factor))
      if not run.exists():
        continue
      record = run_records.load_run(run)
      point = {'status': 'unfinished', 'learning_rate': record['learning_rate']}
      if record['finished'] and record['diverged']:
        point.update(status='diverged', diverged=True)
      elif record['finished'] and not (record['hypotheses'] and references):
        point['status'] = 'no validation translations'
      elif record['finished']:
        use = output_stats.source_use(run_records.hypotheses(record), references)
        point.update(bleu=record['bleu'], shuffled_bleu=use['shuffled_bleu'],
                     distinct=use['distinct'], uses_source=use['uses_source'],
                     status='trained' if use['uses_source'] else 'ignores the source')
      found[factor] = point
    if found:
      points[variant] = found
  return points


def _judged(found: dict[float, dict]) -> dict[float, dict]:
  """The finished points of one variant, as study_plan's rules read them."""
  return {factor: point for factor, point in found.items() if point['status'] in _JUDGED}


def factors_of(found: dict[float, dict]) -> list[float]:
  """The factors one variant's grid trains now: study_plan.grid_factors of its points."""
  return study_plan.grid_factors(_judged(found))


def choices(points: dict[str, dict[float, dict]]) -> dict[str, Optional[float]]:
  """{variant: study_plan.choose_factor over its grid_factors} (None: not chosen yet, or no
  rate trained a model that uses the source)."""
  out = {}
  for variant, found in points.items():
    judged = _judged(found)
    out[variant] = study_plan.choose_factor(
        {factor: judged.get(factor) for factor in study_plan.grid_factors(judged)})
  return out


def lines(points: dict[str, dict[float, dict]], plot_dir: str) -> list[str]:
  """The report's grid section: a row per variant and factor, the choice marked, a plot."""
  if not points:
    return []
  chosen = choices(points)
  low, high = study_plan.EDGE_FACTORS
  out = ['## Learning rate: the grid', '',
         f'Each norm variant at {", ".join(f"{f:g}×" for f in study_plan.LR_FACTORS)} its '
         f'configured peak rate, one seed, {study_plan.GRID_FRACTION:.0%} of the budget, '
         f'decoded on the {study_plan.GRID_SPLIT} split (the test split stays unseen); where '
         'the best of these is the largest (smallest), twice (half) that rate is trained too, '
         f'from {low:g}× to {high:g}× at most (study_plan.grid_factors). '
         '"ignores the source": its BLEU against the references in shuffled order is within '
         f'{output_stats.MIN_SOURCE_GAIN:g} of its BLEU, or fewer than '
         f'{output_stats.MIN_DISTINCT:.0%} of its outputs differ (output_stats.source_use). '
         'The chosen rate (study_plan.choose_factor: best validation BLEU among the runs that '
         'use the source, ties to the smaller rate) is marked ✓; the variants that change no '
         'norm train at the baseline\'s.', '',
         '| variant | factor | peak rate | validation BLEU | shuffled-reference BLEU '
         '| distinct outputs | status | chosen |', '|---|---|---|---|---|---|---|---|']
  fmt = lambda point, key, spec: format(point[key], spec) if key in point else '–'
  for variant, found in points.items():
    for factor in sorted(set(factors_of(found)) | set(found)):
      point = found.get(factor)
      if point is None:
        out.append(f'| {variant} | {factor:g}× | – | – | – | – | not run | |')
        continue
      distinct = f"{point['distinct']:.0%}" if 'distinct' in point else '–'
      out.append(
          f"| {variant} | {factor:g}× | {point['learning_rate']:.2g} | {fmt(point, 'bleu', '.2f')} "
          f"| {fmt(point, 'shuffled_bleu', '.2f')} | {distinct} | {point['status']} "
          f"| {'✓' if chosen[variant] == factor else ''} |")
  out.append('')
  edges = [variant for variant, factor in chosen.items()
            if factor is not None and factor in (low, high)]
  if edges:
    out += [f"At the edge of the rates tried, and so perhaps short of its best: "
            f"{', '.join(f'{v} ({chosen[v]:g}×)' for v in edges)}.", '']
  unchosen = [v for v, factor in chosen.items() if factor is None]
  if unchosen:
    out += [f"No rate chosen yet for {', '.join(unchosen)}: a grid run is unfinished, or none "
            'trained a model that uses the source.', '']
  path = plots.plot_lr_sensitivity(
      {variant: [(p['learning_rate'], p.get('bleu', math.nan), p['status'])
                 for p in found.values() if p['status'] in _JUDGED]
       for variant, found in points.items()},
      os.path.join(plot_dir, 'lr_grid.png'), title='Validation BLEU by peak learning rate',
      ylabel='validation BLEU')
  if path:
    out += [f'![learning-rate grid]({os.path.basename(plot_dir)}/{os.path.basename(path)})', '']
  return out


def rate_cell(variant: str, runs: list[dict], points: dict[str, dict[float, dict]],
              chosen: dict[str, Optional[float]]) -> str:
  """The rate `variant`'s seed runs trained at, as a factor of its grid's 1× when known, and
  a warning when it is not the grid's choice."""
  rates = sorted({run['learning_rate'] for run in runs})
  if not rates:
    return '–'
  owner = study_plan.rate_variant(variant)
  unit = points.get(owner, {}).get(1.0, {}).get('learning_rate')
  if not unit:
    return ', '.join(f'{rate:.2g}' for rate in rates)
  factors = [rate / unit for rate in rates]
  cell = ', '.join(f'{factor:g}× ({rate:.2g})' for factor, rate in zip(factors, rates))
  choice = chosen.get(owner)
  if choice is not None and any(not math.isclose(f, choice) for f in factors):
    cell += f' — the grid chose {choice:g}×'
  return cell + ('' if owner == variant else f" ({owner}'s)")
