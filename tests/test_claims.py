"""The claims' verdicts, from hand-made differences: each rule of claims.judge worked by hand."""

import pytest

from transformer import claims
from transformer.significance import Estimate

LS = claims.Claim('label_smoothing', 'smoothing', (claims.Part('bleu', +1),
                                                   claims.Part('eval_loss_at_peak', +1)))
RD = claims.Claim('r_drop', 'r-drop', (claims.Part('bleu', +1),))
BN = claims.Claim('batch_norm', 'bn', (claims.Part('bleu', -1),))
DN = claims.Claim('deep_norm', 'deep', (claims.Part('bleu', +1),), min_layers=100)


def est(value, low, high, p, seeds=3):
  return Estimate(value, low, high, seeds, p)


def test_a_claim_holds_only_when_every_part_holds():
  both = claims.judge([LS], {'label_smoothing': {'bleu': est(1.5, 0.5, 2.5, 0.01),
                                                'eval_loss_at_peak': est(0.1, 0.05, 0.2, 0.02)}},
                      layers=3)[0]
  assert (both.verdict, both.p_value) == ('agrees', 0.02)  # The larger p of the two parts.
  one = claims.judge([LS], {'label_smoothing': {'bleu': est(1.5, 0.5, 2.5, 0.01),
                                               'eval_loss_at_peak': est(0.01, -0.1, 0.1, 0.6)}},
                     layers=3)[0]
  assert (one.verdict, one.p_value) == ('inconclusive', 0.6)


def test_holm_decides_over_the_family():
  """p = 0.02 and 0.03 with m = 2: Holm 0.04 and 0.04, both under 0.05. A third claim at
  p = 0.02 makes m = 3: 0.02 x 3 = 0.06, and nothing agrees any more."""
  deltas = {'r_drop': {'bleu': est(1.5, 0.4, 2.6, 0.03)},
            'batch_norm': {'bleu': est(-2.0, -3.0, -1.0, 0.02)}}
  two = claims.judge([RD, BN], deltas, layers=3)
  assert [v.adjusted for v in two] == pytest.approx([0.04, 0.04])
  assert [v.verdict for v in two] == ['agrees', 'agrees']
  third = claims.Claim('pre_ln', 'pre', (claims.Part('bleu', +1),))
  deltas['pre_ln'] = {'bleu': est(1.2, 0.1, 2.3, 0.02)}
  three = claims.judge([RD, BN, third], deltas, layers=3)
  assert [v.adjusted for v in three] == pytest.approx([0.06, 0.06, 0.06])
  assert {v.verdict for v in three} == {'inconclusive'}


def test_a_significant_opposite_difference_does_not_agree():
  verdict = claims.judge([RD], {'r_drop': {'bleu': est(-1.5, -2.5, -0.5, 0.001)}}, layers=3)[0]
  assert verdict.verdict == 'does not agree' and verdict.p_value == 0.001


def test_under_one_bleu_needs_five_seeds():
  small = {'r_drop': {'bleu': est(0.6, 0.2, 1.0, 0.001, seeds=3)}}
  assert claims.judge([RD], small, layers=3)[0].verdict == 'inconclusive (needs 5 seeds)'
  small['r_drop']['bleu'] = est(0.6, 0.2, 1.0, 0.001, seeds=5)
  assert claims.judge([RD], small, layers=3)[0].verdict == 'agrees'


def test_untestable_and_unmeasured_claims_stay_out_of_the_family():
  deltas = {'r_drop': {'bleu': est(1.5, 0.4, 2.6, 0.03)},
            'deep_norm': {'bleu': est(-3.0, -4.0, -2.0, 0.001)}}
  verdicts = claims.judge([RD, DN, BN], deltas, layers=3)
  assert [v.verdict for v in verdicts] == ['agrees', 'not testable here', 'not measured']
  assert verdicts[0].adjusted == pytest.approx(0.03)  # A family of one: no correction.
  assert claims.judge([DN], deltas, layers=100)[0].verdict == 'does not agree'


def test_lines_state_the_family_and_each_verdict():
  verdicts = claims.judge([RD, DN], {'r_drop': {'bleu': est(1.5, 0.4, 2.6, 0.03)}}, layers=3)
  text = '\n'.join(claims.lines(verdicts))
  assert 'The family: the 1 claims below' in text
  assert ('- r-drop [r_drop]: test BLEU +1.50 [+0.40, +2.60], p=0.030 (3 seeds); claim '
          'p=0.030, Holm 0.030 — **agrees**.') in text
  assert '- deep [deep_norm] (these models have 3 layers, the claim needs 100 or more) — ' \
         '**not testable here**.' in text


def test_a_part_without_a_p_value_is_inconclusive_outside_the_family():
  """One seed on a side: Welch's test of a validation loss has no p (significance.welch_seeds)."""
  nan = float('nan')
  deltas = {'label_smoothing': {'bleu': est(1.5, 0.5, 2.5, 0.01),
                                'eval_loss_at_peak': est(0.1, nan, nan, nan, seeds=1)},
            'r_drop': {'bleu': est(1.5, 0.4, 2.6, 0.03)}}
  smoothing, r_drop = claims.judge([LS, RD], deltas, layers=3)
  assert smoothing.verdict == 'inconclusive' and smoothing.p_value is None
  assert 'one seed' in smoothing.why
  assert (r_drop.verdict, r_drop.adjusted) == ('agrees', 0.03)  # A family of one.


def test_a_large_difference_from_fewer_than_3_seeds_is_inconclusive():
  """Two seeds leave the seed's noise all but unmeasured, however far from 0 the test set
  puts the difference; the claim stays in the family (its p is corrected with the rest)."""
  deltas = {'batch_norm': {'bleu': est(-2.9, -3.3, -2.4, 0.001, seeds=2)},
            'r_drop': {'bleu': est(1.5, 0.4, 2.6, 0.03)}}
  bn, r_drop = claims.judge([BN, RD], deltas, layers=3)
  assert bn.verdict == 'inconclusive (needs 3 seeds)' and bn.adjusted == pytest.approx(0.002)
  assert (r_drop.verdict, r_drop.adjusted) == ('agrees', 0.03)


def test_a_variant_or_baseline_the_budget_stopped_while_improving_is_not_testable():
  """Its BLEU is not where it ends: any verdict would compare a run cut short."""
  deltas = {'r_drop': {'bleu': est(-1.5, -2.6, -0.4, 0.01)},
            'batch_norm': {'bleu': est(-2.0, -3.0, -1.0, 0.02)}}
  why = 'r_drop seed 1 stopped by the budget of 800 steps before patience ran out'
  r_drop, bn = claims.judge([RD, BN], deltas, layers=3, unended={'r_drop': why})
  assert (r_drop.verdict, r_drop.why, r_drop.p_value) == ('not testable here', why, None)
  assert (bn.verdict, bn.adjusted) == ('agrees', 0.02)  # A family of one.
  both = claims.judge([RD, BN], deltas, layers=3, unended={'baseline': 'cut'})
  assert [v.verdict for v in both] == ['not testable here'] * 2
