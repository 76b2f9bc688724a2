"""The study's statistics: intervals over both noises, sacreBLEU's paired bootstrap, Holm.

A difference between two variants is believed only when it survives both kinds of noise:
the seed (initialization, dropout masks, data order; measured by training several seeds)
and the test set (which sentences happened to be in it). `bootstrap_bleu` resamples both at
once, so its intervals hold both; `paired_bootstrap` is sacreBLEU's test of one pair of
systems on one test set (Koehn 2004), which sees the second noise only: the report uses it
to show that a same-seed retrain already "differs significantly". `welch_seeds` tests a
measure that has no test set (a validation loss), whose only noise is the seed's. `holm`
corrects the report's claims for being tested together.
"""

import dataclasses
import math
import statistics
import warnings
import zlib
from typing import Mapping, Optional, Sequence

import numpy as np
import sacrebleu
from sacrebleu import significance
import scipy.stats

ALPHA = 0.05  # Significance level of every test, after Holm's correction.
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 12345  # sacreBLEU's (SACREBLEU_SEED): one seed draws the test sentences.
_BLEU = sacrebleu.metrics.BLEU()  # The study's BLEU: sacreBLEU's defaults, as decoding scores.


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


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A mean over seeds with its 95% interval (a bootstrap, or Student's t for seeds alone);
  for a difference to the baseline, also its two-sided p-value (None for the baseline)."""
  value: float
  low: float
  high: float
  seeds: int
  p_value: Optional[float] = None

  def excludes_zero(self, sign: int) -> bool:
    """Whether the whole interval lies on the side of 0 that `sign` (+1 or -1) names."""
    return self.low > 0 if sign > 0 else self.high < 0

  def __str__(self) -> str:
    return f'{self.value:+.2f} [{self.low:+.2f}, {self.high:+.2f}]'


@dataclasses.dataclass(frozen=True)
class OverSeeds:
  """What `bootstrap_bleu` and `welch_seeds` return: `means[name]`, each system's mean
  over its seeds; `deltas[name]`, each other system's difference to the baseline."""
  means: dict[str, Estimate]
  deltas: dict[str, Estimate]


def sentence_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
  """sacreBLEU's BLEU statistics of each sentence, [sentences, 2 + 2 * 4]: lengths, matches
  and totals of 1- to 4-grams. Their sum over any set of sentences gives that set's corpus
  BLEU (`corpus_bleu`), so a resample is scored without re-reading the text."""
  return np.asarray(_BLEU._extract_corpus_statistics(  # pylint: disable=protected-access
      list(hypotheses), [list(references)]), dtype=np.float64)


def corpus_bleu(summed_statistics: np.ndarray) -> float:
  """Corpus BLEU from summed sentence statistics, by sacreBLEU's own formula."""
  return _BLEU._compute_score_from_stats(summed_statistics).score  # pylint: disable=protected-access


def bootstrap_bleu(systems: Mapping[str, Sequence[Sequence[str]]], references: Sequence[str],
                   *, baseline: str = 'baseline', samples: int = BOOTSTRAP_SAMPLES,
                   resample_sentences: bool = True, seed: int = BOOTSTRAP_SEED
                   ) -> OverSeeds:
  """Mean test BLEU over seeds, and its difference to the baseline, over both noises.

  `systems[name][i]` holds the test translations of seed i of `name`. Each resample draws
  the test sentences with replacement (one draw for every system, as sacreBLEU's paired
  bootstrap draws them: the comparison is paired over sentences) and, for each system
  apart, its seeds with replacement; it scores corpus BLEU of every drawn seed on the drawn
  sentences and averages over the seeds. The seeds are drawn apart because seed i of two
  variants shares a data order but not a model. The means carry their 95% percentile
  intervals; the differences also the two-sided p-value (`_p_value`). With
  `resample_sentences` False only the seeds are resampled (the test set taken as fixed).
  """
  references = list(references)
  count = len(references)
  rng = np.random.default_rng(seed)
  if resample_sentences:
    drawn = rng.choice(count, size=(samples, count), replace=True)  # As sacreBLEU draws.
    weights = np.zeros((samples, count))
    np.add.at(weights, (np.arange(samples)[:, None], drawn), 1.0)
  else:
    weights = np.ones((samples, count))
  observed, resampled = {}, {}
  for name, seeds in systems.items():
    stats = [sentence_statistics(hypotheses, references) for hypotheses in seeds]
    observed[name] = [corpus_bleu(s.sum(0)) for s in stats]
    # [seeds, samples]: corpus BLEU of each seed on each resample of the sentences.
    resampled[name] = np.array([[corpus_bleu(row) for row in weights @ s] for s in stats])
  return compare_over_seeds(observed, resampled, baseline=baseline, seed=seed)


def welch_seeds(values: Mapping[str, Sequence[float]], *, baseline: str = 'baseline'
                ) -> OverSeeds:
  """Each system's mean over seeds, and its difference to the baseline's, for a measure with
  no test set to resample (a validation loss): Student's t interval of each mean, Welch's
  t-test and its 95% interval for each difference. With 3 seeds a bootstrap of the seeds
  alone draws from 10 distinct means and its intervals are too narrow; t accounts for
  estimating the spread from so few. A difference with one seed on a side, or no spread on
  either, has nothing to test against: its interval and p-value are NaN."""
  observed = {name: np.asarray(v, dtype=np.float64) for name, v in values.items() if len(v)}
  out = OverSeeds({}, {})
  for name, seeds in observed.items():
    low = high = float(seeds.mean())  # One seed, or seeds that agree exactly.
    if len(seeds) > 1 and np.ptp(seeds) > 0:
      low, high = scipy.stats.ttest_1samp(seeds, 0.0).confidence_interval(0.95)
    out.means[name] = Estimate(float(seeds.mean()), float(low), float(high), len(seeds))
  for name, seeds in observed.items():
    if name == baseline or baseline not in observed:
      continue
    base = observed[baseline]
    low = high = p = math.nan
    if min(len(seeds), len(base)) > 1 and np.ptp(seeds) + np.ptp(base) > 0:
      with warnings.catch_warnings():
        # A side whose seeds agree exactly has variance 0, which scipy's check of nearly
        # identical data flags; the test is then exact for the other side's spread.
        warnings.filterwarnings('ignore', 'Precision loss', RuntimeWarning)
        test = scipy.stats.ttest_ind(seeds, base, equal_var=False)
      low, high = test.confidence_interval(0.95)
      p = test.pvalue
    out.deltas[name] = Estimate(float(seeds.mean() - base.mean()), float(low), float(high),
                                min(len(seeds), len(base)), float(p))
  return out


def compare_over_seeds(observed: Mapping[str, Sequence[float]],
                       resampled: Mapping[str, np.ndarray], *, baseline: str, seed: int
                       ) -> OverSeeds:
  """Draws each system's seeds with replacement for each resample of `resampled[name]`
  ([seeds, samples]) and compares the means with the baseline's (see bootstrap_bleu)."""
  means = {}
  for name, scores in resampled.items():
    # Each system's own generator: adding a variant does not move another's draws.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    seeds, samples = scores.shape
    picks = rng.integers(seeds, size=(samples, seeds))
    means[name] = scores[picks, np.arange(samples)[:, None]].mean(axis=1)
  out = OverSeeds({}, {})
  for name, values in means.items():
    low, high = np.percentile(values, [2.5, 97.5])
    out.means[name] = Estimate(float(np.mean(observed[name])), float(low), float(high),
                               len(observed[name]))
  for name, values in means.items():
    if name == baseline or baseline not in means:
      continue
    delta = float(np.mean(observed[name]) - np.mean(observed[baseline]))
    differences = values - means[baseline]
    low, high = np.percentile(differences, [2.5, 97.5])
    out.deltas[name] = Estimate(
        delta, float(low), float(high), min(len(observed[name]), len(observed[baseline])),
        _p_value(differences, delta))
  return out


def _p_value(differences: np.ndarray, observed: float) -> float:
  """Two-sided bootstrap p-value of `observed` (Efron & Tibshirani 1993, 16.4): the
  resampled differences, shifted to mean 0, stand for "no difference"; p is the share of
  them at least as far from 0 as the observed one, counted with the +1 sacreBLEU adds."""
  null = differences - differences.mean()
  return float((np.sum(np.abs(null) >= abs(observed)) + 1) / (len(differences) + 1))


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
  """Holm's (1979) step-down adjusted p-values: the k-th smallest of m is multiplied by
  m - k + 1 and never falls below the one before. Rejecting where the adjusted p < ALPHA
  keeps the chance of any false claim in the family under ALPHA, whatever their dependence."""
  adjusted, running = {}, 0.0
  for rank, name in enumerate(sorted(p_values, key=p_values.get)):
    running = max(running, min(1.0, (len(p_values) - rank) * p_values[name]))
    adjusted[name] = running
  return adjusted


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
