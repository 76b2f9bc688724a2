"""The study's statistics against sacreBLEU's own scores, an exact bootstrap enumerated by
hand, and Holm's correction worked on paper."""

import itertools
import math

import numpy as np
import pytest
import sacrebleu
import scipy.stats

from transformer import significance

REFERENCES = [f'the cat number {i} sat on the mat number {i} today .' for i in range(60)]


def degrade(sentences, every, seed=0):
  """Drops words from every `every`-th sentence (a worse, different system)."""
  rng = np.random.default_rng(seed)
  out = []
  for i, s in enumerate(sentences):
    words = s.split()
    if i % every == 0:
      words = [w for w in words if rng.random() > 0.5]
    out.append(' '.join(words))
  return out


def test_paired_bootstrap_deltas_are_sacrebleu_corpus_differences():
  baseline = degrade(REFERENCES, 2)
  near = list(baseline)  # Two sentences changed: a difference the test set cannot confirm.
  near[1], near[3] = 'the cat', REFERENCES[3].replace('today', 'yesterday')
  systems = {'near': near, 'better': degrade(REFERENCES, 7, seed=1)}
  results = significance.paired_bootstrap(baseline, systems, REFERENCES, samples=200)
  bleu = lambda h: sacrebleu.corpus_bleu(h, [REFERENCES]).score
  assert math.isclose(results['baseline']['bleu'], bleu(baseline))
  for name, hyps in systems.items():
    assert math.isclose(results[name]['delta'], bleu(hyps) - bleu(baseline))
  assert results['near']['delta'] < 0 and results['near']['p_value'] > 0.05
  assert results['better']['delta'] > 0 and results['better']['p_value'] < 0.05
  lo = results['better']['mean'] - results['better']['ci']
  hi = results['better']['mean'] + results['better']['ci']
  assert lo < results['better']['bleu'] < hi


def test_delta_interval_is_over_paired_resamples():
  """The interval of the difference: resample k scores the same sentences for both systems.

  Reference: sacreBLEU's resample indices (default_rng(12345), as its paired test draws
  them), each resample scored by sacrebleu.corpus_bleu.
  """
  baseline, better = degrade(REFERENCES, 2), degrade(REFERENCES, 7, seed=1)
  samples = 80
  result = significance.paired_bootstrap(baseline, {'better': better}, REFERENCES,
                                         samples=samples)['better']
  idxs = np.random.default_rng(12345).choice(len(REFERENCES), size=(samples, len(REFERENCES)))
  pick = lambda sentences, idx: [sentences[i] for i in idx]
  deltas = np.sort([
      sacrebleu.corpus_bleu(pick(better, idx), [pick(REFERENCES, idx)]).score -
      sacrebleu.corpus_bleu(pick(baseline, idx), [pick(REFERENCES, idx)]).score
      for idx in idxs])
  np.testing.assert_allclose([result['delta_low'], result['delta_high']],
                             [deltas[samples // 40], deltas[samples - samples // 40 - 1]],
                             atol=1e-3)
  assert result['delta_low'] < result['delta'] < result['delta_high']
  assert result['delta_low'] > 0  # p < 0.05 above, so the interval excludes 0.


def test_mean_std():
  assert significance.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
  assert significance.mean_std([4.0]) == (4.0, 0.0)
  assert significance.format_mean_std([1.0, 2.0, 3.0]) == '2.00 ± 1.00'
  assert significance.format_mean_std([]) == '–'


def test_sentence_statistics_sum_to_sacrebleu_corpus_bleu():
  """Summed over any set of sentences, the statistics give that set's sacreBLEU score."""
  hypotheses = degrade(REFERENCES, 2)
  stats = significance.sentence_statistics(hypotheses, REFERENCES)
  assert stats.shape == (len(REFERENCES), 10)
  assert math.isclose(significance.corpus_bleu(stats.sum(0)),
                      sacrebleu.corpus_bleu(hypotheses, [REFERENCES]).score)
  subset = [3, 3, 7, 11, 40, 59]  # A resample: sentence 3 twice.
  assert math.isclose(significance.corpus_bleu(stats[subset].sum(0)), sacrebleu.corpus_bleu(
      [hypotheses[i] for i in subset], [[REFERENCES[i] for i in subset]]).score)


def test_one_seed_matches_sacrebleus_paired_bootstrap():
  """With one seed per system only the sentences are resampled, as sacreBLEU resamples them.

  sacreBLEU states its interval as the resamples' mean ± half the distance between their
  2.5th and 97.5th percentiles; ours is those percentiles: the same width.
  """
  baseline, better = degrade(REFERENCES, 2), degrade(REFERENCES, 7, seed=1)
  samples = 4000
  ours = significance.bootstrap_bleu({'baseline': [baseline], 'better': [better]}, REFERENCES,
                                     samples=samples)
  theirs = significance.paired_bootstrap(baseline, {'better': better}, REFERENCES,
                                         samples=samples)
  for name in ('baseline', 'better'):
    mean = ours.means[name]
    assert math.isclose(mean.value, theirs[name]['bleu'])
    assert abs((mean.high - mean.low) / 2 - theirs[name]['ci']) < 0.05
    assert mean.low < theirs[name]['mean'] < mean.high
  delta = ours.deltas['better']
  assert math.isclose(delta.value, theirs['better']['delta'])
  np.testing.assert_allclose([delta.low, delta.high],
                             [theirs['better']['delta_low'], theirs['better']['delta_high']],
                             atol=0.05)
  assert delta.p_value < 0.05 and theirs['better']['p_value'] < 0.05


def test_identical_systems_differ_by_nothing():
  hypotheses = degrade(REFERENCES, 3)
  one = significance.bootstrap_bleu({'baseline': [hypotheses], 'same': [list(hypotheses)]},
                                    REFERENCES, samples=300).deltas['same']
  assert (one.value, one.low, one.high, one.p_value) == (0.0, 0.0, 0.0, 1.0)
  seeds = [degrade(REFERENCES, 3, seed=s) for s in range(3)]
  three = significance.bootstrap_bleu({'baseline': seeds, 'same': list(seeds)}, REFERENCES,
                                      samples=300).deltas['same']
  assert three.value == 0.0 and three.low < 0 < three.high and three.p_value > 0.5


def exact_quantile(values, weights, q):
  """The q-quantile of a discrete distribution: the smallest value whose CDF reaches q."""
  order = np.argsort(values)
  cdf = np.cumsum(np.asarray(weights)[order])
  return np.asarray(values)[order][np.searchsorted(cdf, q)]


def test_welch_seeds_is_welchs_t_test_worked_from_its_formula():
  """Reference: Welch (1947) by hand: t, the Welch-Satterthwaite degrees of freedom, and the
  t distribution's tail and quantile for p and the 95% interval."""
  base, variant = [10.0, 11.3, 13.9], [12.2, 12.5, 15.6, 14.0]
  result = significance.welch_seeds({'baseline': base, 'variant': variant})
  var_base, var_variant = np.var(base, ddof=1) / 3, np.var(variant, ddof=1) / 4
  se = math.sqrt(var_base + var_variant)
  df = (var_base + var_variant) ** 2 / (var_base ** 2 / 2 + var_variant ** 2 / 3)
  delta = np.mean(variant) - np.mean(base)
  half = scipy.stats.t.ppf(0.975, df) * se
  got = result.deltas['variant']
  assert got.value == pytest.approx(delta) and got.seeds == 3
  assert got.p_value == pytest.approx(2 * scipy.stats.t.sf(abs(delta) / se, df))
  assert (got.low, got.high) == pytest.approx((delta - half, delta + half))
  mean = result.means['baseline']
  half_mean = scipy.stats.t.ppf(0.975, 2) * np.std(base, ddof=1) / math.sqrt(3)
  assert (mean.low, mean.high) == pytest.approx((np.mean(base) - half_mean,
                                                 np.mean(base) + half_mean))


def test_welch_seeds_with_one_seed_has_no_interval_and_no_p():
  one = significance.welch_seeds({'baseline': [10.0, 11.0], 'variant': [12.0]}).deltas['variant']
  assert one.value == pytest.approx(1.5) and one.seeds == 1
  assert math.isnan(one.p_value) and math.isnan(one.low) and math.isnan(one.high)


def test_three_seeds_of_welch_are_wider_than_their_bootstrap():
  """Why seeds alone go to Welch: three seeds bootstrapped draw from 10 distinct means."""
  base, variant = [10.0, 11.3, 13.9], [12.2, 12.5, 15.6]
  welch = significance.welch_seeds({'baseline': base, 'variant': variant}).deltas['variant']
  fixed = {name: np.repeat(np.asarray(v)[:, None], 2000, axis=1)
           for name, v in (('baseline', base), ('variant', variant))}
  boot = significance.compare_over_seeds({'baseline': base, 'variant': variant}, fixed,
                                         baseline='baseline', seed=0).deltas['variant']
  assert welch.high - welch.low > 1.5 * (boot.high - boot.low)  # 8.8 against 4.9.
  assert welch.p_value > boot.p_value


def test_seed_resampling_is_the_percentile_bootstrap_of_seed_means():
  """compare_over_seeds (bootstrap_bleu's draw of seeds) with no sentence noise, each seed's
  score repeated. Reference: every one of the 3^3 x 3^3 equally likely seed resamples."""
  base, variant = [10.0, 11.3, 13.9], [12.2, 12.5, 15.6]  # No atom on a quantile or on |p|.
  observed = {'baseline': base, 'variant': variant}
  result = significance.compare_over_seeds(
      observed, {k: np.repeat(np.asarray(v)[:, None], 20000, axis=1)
                 for k, v in observed.items()}, baseline='baseline', seed=0)
  means = lambda seeds: [np.mean(draw) for draw in itertools.product(seeds, repeat=3)]
  differences = [v - b for v in means(variant) for b in means(base)]
  weights = np.full(len(differences), 1 / len(differences))
  delta = result.deltas['variant']
  assert math.isclose(delta.value, np.mean(variant) - np.mean(base))
  assert exact_quantile(differences, weights, 0.02) <= delta.low <= exact_quantile(
      differences, weights, 0.03)
  assert exact_quantile(differences, weights, 0.97) <= delta.high <= exact_quantile(
      differences, weights, 0.98)
  base_means = means(base)
  mean = result.means['baseline']
  uniform = np.full(len(base_means), 1 / len(base_means))
  assert exact_quantile(base_means, uniform, 0.02) <= mean.low <= exact_quantile(
      base_means, uniform, 0.03)
  # Shifted to mean 0, the exact differences put this share at least as far out as observed.
  exact_p = np.mean(np.abs(np.array(differences) - np.mean(differences)) >= abs(delta.value))
  assert abs(delta.p_value - exact_p) < 0.01


def test_seed_only_bleu_is_the_seed_bootstrap_of_per_seed_bleu():
  seeds = {'baseline': [degrade(REFERENCES, 2, seed=s) for s in range(3)],
           'variant': [degrade(REFERENCES, 4, seed=s) for s in range(3)]}
  fixed = significance.bootstrap_bleu(seeds, REFERENCES, samples=500, resample_sentences=False)
  per_seed = {name: [sacrebleu.corpus_bleu(h, [REFERENCES]).score for h in runs]
              for name, runs in seeds.items()}
  seeds_only = {name: np.repeat(np.asarray(v)[:, None], 500, axis=1)
                for name, v in per_seed.items()}
  assert fixed == significance.compare_over_seeds(per_seed, seeds_only, baseline='baseline',
                                                  seed=significance.BOOTSTRAP_SEED)
  both = significance.bootstrap_bleu(seeds, REFERENCES, samples=500)
  width = lambda e: e.high - e.low
  assert width(both.deltas['variant']) > width(fixed.deltas['variant'])  # Two noises, wider.


def test_holm_by_hand():
  """m = 4: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to
  the 0.06 before it (step-down order); a p of 0.4 x 4 would be capped at 1."""
  adjusted = significance.holm({'a': 0.01, 'b': 0.04, 'c': 0.03, 'd': 0.005})
  assert adjusted == pytest.approx({'a': 0.03, 'b': 0.06, 'c': 0.06, 'd': 0.02})
  assert significance.holm({'a': 0.4, 'b': 0.3, 'c': 0.5, 'd': 0.6}) == pytest.approx(
      {'b': 1.0, 'a': 1.0, 'c': 1.0, 'd': 1.0})
  assert significance.holm({}) == {}
