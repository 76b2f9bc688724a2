"""The study's statistics against sacreBLEU's own scores and the stated verdict rule."""

import math

import numpy as np
import pytest
import sacrebleu

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


@pytest.mark.parametrize('sign, deltas, p_values, expected', [
    (1, [1.0, 1.2, 0.9], [0.01, 0.02, 0.001], 'agrees'),
    (-1, [1.0, 1.2, 0.9], [0.01, 0.02, 0.001], 'does not agree'),
    (1, [1.0, 1.2, 0.9], [0.01, 0.2, 0.001], 'inconclusive'),  # One seed not significant.
    (1, [1.0, -0.8, 0.2], [0.01, 0.01, 0.01], 'inconclusive'),  # Seeds disagree: std > mean.
    (1, [1.0], [0.001], 'inconclusive'),  # One seed: the spread is unknown.
])
def test_verdict_follows_the_stated_rule(sign, deltas, p_values, expected):
  assert significance.verdict(sign, deltas, p_values) == expected
