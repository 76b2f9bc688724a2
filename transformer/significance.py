"""The study's statistics: spread over seeds, sacreBLEU's paired bootstrap, and the verdict rule.

A difference between two variants is believed only when it survives both kinds of noise:
the seed (initialization, dropout masks, data order; measured by training several seeds)
and the test set (which sentences happened to be in it; measured by sacreBLEU's paired
bootstrap resampling, Koehn 2004, 1,000 resamples, as `sacrebleu --paired-bs` runs it).
"""

import math
import statistics
from typing import Mapping, Sequence

import numpy as np
import sacrebleu
from sacrebleu import significance

ALPHA = 0.05  # Significance level of the paired bootstrap.
BOOTSTRAP_SAMPLES = 1000
VERDICT_RULE = (
    'A literature claim predicts the sign of the difference to the baseline, seed by seed '
    "(seed i of the variant against the baseline's seed i). It **agrees** when the mean "
    'difference over seeds has that sign and is larger than the spread of the difference '
    'over seeds (its standard deviation; with one seed this half of the rule cannot be '
    'checked and the verdict is at most inconclusive), and, for a claim about test BLEU, '
    f'the paired bootstrap finds p < {ALPHA} for every seed (a claim about a validation loss '
    'has no test set to resample: the seeds alone decide); it **does not agree** when the '
    'same holds with the opposite sign; otherwise it is **inconclusive**.')


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

  Returns {name: {'bleu', 'delta' (system - baseline BLEU), 'p_value', 'mean', 'ci',
  'delta_low', 'delta_high'}} and an entry for 'baseline'. mean ± ci is the system's
  bootstrap mean and 95% interval (sacreBLEU's); [delta_low, delta_high] is the 95% interval
  of the difference over the same resamples: sacreBLEU draws them from one seed
  (SACREBLEU_SEED, default 12345), so resample k picks the same sentences for every system
  and the difference is paired, as in the test itself. The figures are reproducible.
  """
  named = [('baseline', list(baseline))] + [(name, list(h)) for name, h in systems.items()]
  test = significance.PairedTest(named, {'BLEU': sacrebleu.metrics.BLEU()}, [list(references)],
                                 test_type='bs', n_samples=samples)
  _, scores = test()
  resampled = {name: np.array([s.score for s in _resampled_bleu(h, references, samples)])
               for name, h in named}
  base = scores['BLEU'][0].score
  out = {}
  for (name, _), r in zip(named, scores['BLEU']):
    # estimate_ci's interval, bound by bound: the 2.5th and 97.5th percentile resamples.
    low, high = np.sort(resampled[name] - resampled['baseline'])[[samples // 40,
                                                                   samples - samples // 40 - 1]]
    out[name] = {'bleu': r.score, 'delta': r.score - base,
                 'p_value': 1.0 if r.p_value is None else float(r.p_value),
                 'mean': float(r.mean), 'ci': float(r.ci),
                 'delta_low': float(low), 'delta_high': float(high)}
  return out


def _resampled_bleu(hypotheses: Sequence[str], references: Sequence[str], samples: int) -> list:
  """BLEU of each of sacreBLEU's bootstrap resamples (its own statistics and resampler)."""
  metric = sacrebleu.metrics.BLEU()
  stats = metric._extract_corpus_statistics(list(hypotheses), [list(references)])  # pylint: disable=protected-access
  _, resampled = significance._bootstrap_resample(stats, metric, samples)  # pylint: disable=protected-access
  return resampled


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
