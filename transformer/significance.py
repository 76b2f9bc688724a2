"""The study's statistics: spread over seeds, sacreBLEU's paired bootstrap, and the verdict rule.

A difference between two variants is believed only when it survives both kinds of noise:
the seed (initialization, dropout masks, data order; measured by training several seeds)
and the test set (which sentences happened to be in it; measured by sacreBLEU's paired
bootstrap resampling, Koehn 2004, 1,000 resamples, as `sacrebleu --paired-bs` runs it).
"""

import math
import statistics
from typing import Mapping, Sequence

import sacrebleu
from sacrebleu import significance

ALPHA = 0.05  # Significance level of the paired bootstrap.
BOOTSTRAP_SAMPLES = 1000
VERDICT_RULE = (
    'A literature claim predicts the sign of the difference to the baseline. It **agrees** '
    'when the mean difference over seeds has that sign, is larger than the spread of the '
    'difference over seeds (its standard deviation; with one seed this half of the rule '
    'cannot be checked and the verdict is at most inconclusive), and the paired bootstrap '
    f'finds p < {ALPHA} for every seed; it **does not agree** when the same holds with the '
    'opposite sign; otherwise it is **inconclusive**.')


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  values = [float(v) for v in values]
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
  """'4.12 ± 0.31' (or '4.12' for one value; '–' for none)."""
  if not values:
    return '–'
  mean, std = mean_std(values)
  return f'{mean:.{digits}f}' + (f' ± {std:.{digits}f}' if len(values) > 1 else '')


def paired_bootstrap(baseline: Sequence[str], systems: Mapping[str, Sequence[str]],
                     references: Sequence[str], *, samples: int = BOOTSTRAP_SAMPLES
                     ) -> dict[str, dict[str, float]]:
  """sacreBLEU's paired bootstrap of each system against the baseline on one test set.

  Returns {name: {'bleu', 'delta' (system - baseline BLEU), 'p_value', 'mean', 'ci'}}, where
  mean ± ci is the system's bootstrap mean and 95% interval, and also an entry for
  'baseline'. The resampling seed is sacreBLEU's (SACREBLEU_SEED, default 12345), so the
  figures are reproducible.
  """
  named = [('baseline', list(baseline))] + [(name, list(h)) for name, h in systems.items()]
  test = significance.PairedTest(named, {'BLEU': sacrebleu.metrics.BLEU()}, [list(references)],
                                 test_type='bs', n_samples=samples)
  _, scores = test()
  results = scores['BLEU']
  base = results[0].score
  return {name: {'bleu': r.score, 'delta': r.score - base,
                 'p_value': 1.0 if r.p_value is None else float(r.p_value),
                 'mean': float(r.mean), 'ci': float(r.ci)}
          for (name, _), r in zip(named, results)}


def verdict(expected_sign: int, deltas: Sequence[float], p_values: Sequence[float]) -> str:
  """'agrees', 'does not agree' or 'inconclusive' by VERDICT_RULE.

  `deltas[i]` and `p_values[i]` compare seed i of the variant with seed i of the baseline.
  """
  if not deltas or expected_sign not in (-1, 1):
    return 'inconclusive'
  mean, std = mean_std(deltas)
  significant = all(p < ALPHA for p in p_values)
  if len(deltas) < 2 or not significant or abs(mean) <= std or mean == 0:
    return 'inconclusive'
  return 'agrees' if math.copysign(1, mean) == expected_sign else 'does not agree'
