"""The study's plan as data, and the rules that extend it from finished runs.

The study runs in stages; what a later stage trains depends on what an earlier one found:

1. The learning-rate grid: every norm variant (NORM_VARIANTS) at each of LR_FACTORS times
   its configured rate, one seed, GRID_FRACTION of the budget, decoded on the validation
   split; where the best rate is the grid's largest (smallest), twice (half) that rate is
   added, within EDGE_FACTORS (`grid_factors`), so that a chosen rate is not an edge.
2. The seeds: every variant at the rate the grid chose for it (`choose_factor`; a variant
   that changes no norm takes the baseline's), FIRST_SEEDS seeds, each trained until its
   validation BLEU stops improving (the regime's patience) or its budget ends.
3. More seeds where the answer turns on less than CLOSE_BLEU (`seeds_needed`).
4. Same-seed reruns of the baseline (RERUNS): how far training alone moves a result.

Every rule reads only what runs wrote, so the report shows the choice the study made. No JAX
is imported: the report reads this module.
"""

import os
from typing import Mapping, Optional, Sequence

STUDY_VARIANTS = ('baseline', 'pre_ln', 'rms_norm', 'batch_norm', 'deep_norm', 'rezero',
                  'no_dropout', 'strong_dropout', 'label_smoothing', 'r_drop')
# Each of these trains at the rate its own grid chose (Xiong et al. 2020 and Liu et al. 2020
# show the norm's place changes which rates train); the regularization variants keep the
# baseline's network and so its rate.
NORM_VARIANTS = ('baseline', 'pre_ln', 'rms_norm', 'batch_norm', 'deep_norm', 'rezero')
RATE_OWNER = 'baseline'

# How a run ends: rsqrt decay (Vaswani et al. 2017), whose rate does not depend on the
# budget, and patience on validation BLEU, the metric that picks the test checkpoint: 5
# evaluations without a gain of more than 0.5 BLEU, about one standard deviation of the
# evaluation-to-evaluation changes of the pilot's 3,000-pair baseline after step 4,000 (greedy
# BLEU on 500 sentences), where its validation NLL had been rising for 2,800 steps.
STOPPING_RULE = {'lr_schedule': 'rsqrt', 'warmup_steps': 400, 'eval_every_steps': 400,
                 'checkpoint_every_steps': 200, 'patience': 5, 'patience_min_delta': 0.5,
                 'num_eval_bleu_sentences': 500}
# The regime of every run of a scale, under any --config overrides. Small: chosen from the
# pilot's curves (REPORT.md, "The regime"): on 3,000 pairs the baseline over-fits (its
# validation NLL rises from step 1,200) and its validation BLEU peaks before the last quarter
# of 8,000 steps; on 8,000 pairs it was still rising at step 6,400, and a run to the budget's
# end, ~50 times over, does not fit the study's 24 hours of the 2-core CPU.
REGIMES = {
    'small': {**STOPPING_RULE, 'num_train_steps': 8000, 'max_train_pairs': 3000},
    'bible_base': {},
    'full': {},
}

# The pilot: the baseline, seed 0, at candidate data sizes under the stopping rule. Every
# Bible pair (28,581) was left out: at 8,000 pairs a run already takes most of the 8,000-step
# budget, and the study's ~50 runs must fit in 24 hours of the 2-core CPU.
PILOT_RULE = {**STOPPING_RULE, 'num_train_steps': 8000}
PILOT_RUNS = {
    'pilot/pairs_3000': {'max_train_pairs': 3000},
    'pilot/pairs_8000': {'max_train_pairs': 8000},
}

LR_GRID_DIR = 'lr_grid'
LR_FACTORS = (0.5, 1.0, 2.0)
# How far the grid may extend past LR_FACTORS when its best rate is an edge: two doublings
# up, two halvings down.
EDGE_FACTORS = (0.125, 8.0)
GRID_FRACTION = 0.25  # Of the regime's step budget; evaluated as the regime is, no patience.
GRID_SPLIT = 'validation'  # Rates are chosen on validation; the test split stays unseen.

FIRST_SEEDS = 3
MORE_SEEDS = 5
CLOSE_BLEU = 1.0  # A difference to the baseline under this many BLEU gets MORE_SEEDS.
RERUN_DIR = 'rerun'
RERUNS = (('baseline', 0), ('baseline', 1))  # (variant, seed) trained a second time.
LEARNER_RUNS = {'learner/no_positions': ('baseline', {'model.positions': 'none'})}


def grid_name(variant: str, factor: float) -> str:
  """'lr_grid/<variant>_lr<factor>x': one point of the grid."""
  return os.path.join(LR_GRID_DIR, f'{variant}_lr{factor:g}x')


def rerun_name(variant: str) -> str:
  """'rerun/<variant>': the folder of a variant's same-seed reruns."""
  return os.path.join(RERUN_DIR, variant)


def rate_variant(variant: str) -> str:
  """The variant whose grid sets `variant`'s rate: itself for a norm variant, else the baseline."""
  return variant if variant in NORM_VARIANTS else RATE_OWNER


def choose_factor(points: Mapping[float, Optional[dict]]) -> Optional[float]:
  """The grid's choice for one variant: the factor with the best validation BLEU among the
  runs that did not diverge and use the source (output_stats.source_use); ties go to the
  smaller rate. `points` maps each factor to {'bleu', 'uses_source'}, {'diverged': True},
  or None while that run is unfinished; returns None until every point is finished, or when
  no rate trained a model that uses the source.
  """
  if any(point is None for point in points.values()):
    return None
  usable = {factor: point['bleu'] for factor, point in points.items()
            if not point.get('diverged') and point['uses_source']}
  if not usable:
    return None
  return max(sorted(usable), key=lambda factor: usable[factor])


def grid_factors(points: Mapping[float, Optional[dict]]) -> list[float]:
  """The factors one variant's grid trains, in increasing order: LR_FACTORS, then twice
  the largest while the best (choose_factor) is the largest, and half the smallest while it
  is the smallest, within EDGE_FACTORS. `points` holds the finished ones as choose_factor
  reads them; an extension waits for every factor before it to finish.
  """
  factors = sorted(LR_FACTORS)
  while True:
    best = choose_factor({factor: points.get(factor) for factor in factors})
    if best is not None and best == factors[-1] and best * 2 <= EDGE_FACTORS[1]:
      factors.append(best * 2)
    elif best is not None and best == factors[0] and best / 2 >= EDGE_FACTORS[0]:
      factors.insert(0, best / 2)
    else:
      return factors


def all_grid_factors() -> list[float]:
  """Every factor a grid can train (LR_FACTORS and its extensions), in increasing order."""
  factors, low, high = set(LR_FACTORS), min(LR_FACTORS), max(LR_FACTORS)
  while low / 2 >= EDGE_FACTORS[0]:
    low /= 2
    factors.add(low)
  while high * 2 <= EDGE_FACTORS[1]:
    high *= 2
    factors.add(high)
  return sorted(factors)


def seeds_needed(variant_bleus: Sequence[float], baseline_bleus: Sequence[float], *,
                 first: int = FIRST_SEEDS, more: int = MORE_SEEDS) -> int:
  """`first`, or `more` seeds when the first seeds' mean test BLEU differs from the
  baseline's by less than CLOSE_BLEU: a claim about a small difference needs more seeds."""
  if len(variant_bleus) < first or len(baseline_bleus) < first:
    return first
  mean = lambda values: sum(values[:first]) / first
  return more if abs(mean(variant_bleus) - mean(baseline_bleus)) < CLOSE_BLEU else first
