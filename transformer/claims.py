"""The literature's claims about the variants, each in the form its paper makes it, and how
the study's runs answer them.

A claim is one or more predicted signs of (variant - baseline): label smoothing "hurts
perplexity ... but improves BLEU" (Vaswani et al. 2017), so it is tested as both at once.
Every difference is a mean over seeds with an interval over seeds and test sentences
(significance.bootstrap_bleu; Welch's t-test over seeds for a validation loss,
significance.welch_seeds). The claims tested together
form one family, corrected by Holm's method, so "agrees" is not won by testing many things.
"""

import dataclasses
import math
from typing import Mapping, Optional, Sequence

from transformer import significance
from transformer import study_plan

# What each measure of (variant - baseline) is, as the report names it. Every loss is
# eval/loss: the unsmoothed cross-entropy (steps.eval_step scores with label_smoothing 0.0,
# without dropout), so it is the validation negative log-likelihood for every variant.
MEASURES = {
    'bleu': 'test BLEU',
    'early_eval_loss': 'validation NLL at the first evaluation',
    'eval_loss_at_peak': 'validation NLL at the tested checkpoint',
    'gap_at_common_step': 'validation minus training NLL at the last step both reached',
}
VERDICTS = ('agrees', 'does not agree', 'inconclusive', 'inconclusive (needs 3 seeds)',
            'inconclusive (needs 5 seeds)',
            'not testable here', 'not measured')
# The claim about DeepNorm is about depth: Wang et al. (2022) train up to 1,000 layers, where
# post-LN fails; only a model at least this deep could test it.
DEEP_LAYERS = 100


@dataclasses.dataclass(frozen=True)
class Part:
  """One predicted sign of (variant - baseline) of one MEASURES key."""
  measure: str
  sign: int


@dataclasses.dataclass(frozen=True)
class Claim:
  """A result from the literature: every part must hold for it to agree."""
  variant: str
  text: str
  parts: tuple[Part, ...]
  min_layers: int = 0  # Encoder layers below which the study cannot test it.


CLAIMS = (
    Claim('pre_ln', 'Pre-LN trains faster early on (Xiong et al. 2020)',
          (Part('early_eval_loss', -1),)),
    Claim('pre_ln', 'Pre-LN translates better than post-LN on a small corpus (Nguyen & '
          'Salazar 2019; the first study\'s largest difference)', (Part('bleu', +1),)),
    Claim('rezero', 'ReZero trains faster early on than post-LN (Bachlechner et al. 2020)',
          (Part('early_eval_loss', -1),)),
    Claim('batch_norm', 'BatchNorm translates worse than LayerNorm (Shen et al. 2020)',
          (Part('bleu', -1),)),
    Claim('deep_norm', 'DeepNorm keeps very deep post-LN Transformers trainable (Wang et al. '
          '2022, up to 1,000 layers)', (Part('bleu', +1),), min_layers=DEEP_LAYERS),
    Claim('no_dropout', 'Without dropout a small corpus over-fits: lower BLEU and a wider gap '
          'between validation and training loss (Srivastava et al. 2014; Sennrich & Zhang '
          '2019)', (Part('bleu', -1), Part('gap_at_common_step', +1))),
    Claim('strong_dropout', 'More residual dropout (0.3) helps a small corpus: higher BLEU '
          '(Sennrich & Zhang 2019)', (Part('bleu', +1),)),
    Claim('label_smoothing', 'Label smoothing raises BLEU but hurts likelihood: higher '
          'validation NLL (Vaswani et al. 2017; Müller et al. 2019)',
          (Part('bleu', +1), Part('eval_loss_at_peak', +1))),
    Claim('r_drop', 'R-Drop raises BLEU (Liang et al. 2021)', (Part('bleu', +1),)),
)


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A claim's answer: its parts' differences, its p-value before and after Holm."""
  claim: Claim
  verdict: str
  estimates: tuple[Optional[significance.Estimate], ...] = ()
  p_value: Optional[float] = None
  adjusted: Optional[float] = None
  why: str = ''


def judge(claims: Sequence[Claim],
          deltas: Mapping[str, Mapping[str, significance.Estimate]],
          layers: int, unended: Optional[Mapping[str, str]] = None) -> list[Verdict]:
  """The verdict of each claim from `deltas[variant][measure]` (variant - baseline).

  A claim is tested when the regime can test it (`min_layers`) and every part is measured;
  the tested claims are the family. Its p-value: when every part has the predicted sign, the
  largest of theirs (all must hold: an intersection-union test); otherwise the smallest of
  the parts against the prediction. After Holm's correction over the family it **agrees**
  when the adjusted p < ALPHA and every part's interval lies on the predicted side of 0,
  **does not agree** when that holds against the prediction for some part, and is
  **inconclusive** otherwise. A claim that turns on less than study_plan.CLOSE_BLEU with
  fewer than study_plan.MORE_SEEDS seeds is "inconclusive (needs 5 seeds)", and any other
  with fewer than study_plan.FIRST_SEEDS "inconclusive (needs 3 seeds)", whatever its p;
  one with a part that has no p-value (one seed on a side) is inconclusive, outside the family.
  `unended[variant]` says why the variant's runs (or the baseline's, under 'baseline') did not
  end within the budget: its BLEU is not where it ends, so its claims are not testable here.
  """
  unended = unended or {}
  tested, out = {}, {}
  for index, claim in enumerate(claims):
    if layers < claim.min_layers:
      out[index] = Verdict(claim, 'not testable here',
                           why=f'these models have {layers} layers, the claim needs '
                           f'{claim.min_layers} or more')
      continue
    why_unended = unended.get(claim.variant) or unended.get('baseline')
    if why_unended:
      out[index] = Verdict(claim, 'not testable here', why=why_unended)
      continue
    estimates = tuple(deltas.get(claim.variant, {}).get(part.measure) for part in claim.parts)
    if any(e is None or math.isnan(e.value) for e in estimates):
      out[index] = Verdict(claim, 'not measured', estimates)
      continue
    if any(math.isnan(e.p_value) for e in estimates):
      out[index] = Verdict(claim, 'inconclusive', estimates,
                           why='one seed on a side: a validation loss has no test set to '
                           'resample, so its test needs 2 seeds or more')
      continue
    tested[index] = (claim, estimates, _claim_p_value(claim, estimates))
  adjusted = significance.holm({index: p for index, (_, _, p) in tested.items()})
  for index, (claim, estimates, p) in tested.items():
    out[index] = Verdict(claim, _verdict(claim, estimates, adjusted[index]), estimates, p,
                         adjusted[index])
  return [out[index] for index in range(len(claims))]


def _predicted(claim: Claim, estimates: Sequence[significance.Estimate]) -> list[bool]:
  return [math.copysign(1, e.value) == part.sign and e.value != 0
          for part, e in zip(claim.parts, estimates)]


def _claim_p_value(claim: Claim, estimates: Sequence[significance.Estimate]) -> float:
  predicted = _predicted(claim, estimates)
  if all(predicted):
    return max(e.p_value for e in estimates)
  return min(e.p_value for e, ok in zip(estimates, predicted) if not ok)


def _verdict(claim: Claim, estimates: Sequence[significance.Estimate], adjusted: float) -> str:
  close = [part.measure == 'bleu' and abs(e.value) < study_plan.CLOSE_BLEU and
           e.seeds < study_plan.MORE_SEEDS for part, e in zip(claim.parts, estimates)]
  if any(close):
    return 'inconclusive (needs 5 seeds)'
  if any(e.seeds < study_plan.FIRST_SEEDS for e in estimates):
    return 'inconclusive (needs 3 seeds)'  # Fewer leave the seed's noise all but unmeasured.
  if adjusted >= significance.ALPHA:
    return 'inconclusive'
  predicted = _predicted(claim, estimates)
  if all(predicted) and all(e.excludes_zero(part.sign)
                            for part, e in zip(claim.parts, estimates)):
    return 'agrees'
  if any(not ok and e.excludes_zero(-part.sign)
         for part, e, ok in zip(claim.parts, estimates, predicted)):
    return 'does not agree'
  return 'inconclusive'


def lines(verdicts: Sequence[Verdict]) -> list[str]:
  """The report's "Claims" section: the family, then one line per claim."""
  family = [v for v in verdicts if v.p_value is not None]
  out = [
      f'Each claim is tested in the form its paper makes it, as the sign of (variant - '
      f'baseline) of every measure it names; all must hold. A difference is the mean over '
      f'seeds, with a 95% interval and a two-sided p-value from a bootstrap over seeds and '
      f'test sentences ({significance.BOOTSTRAP_SAMPLES:,} resamples); a validation NLL has '
      f'no test set, so its seeds alone are compared, by Welch\'s t-test. Every NLL is the '
      f'unsmoothed cross-entropy without dropout (eval/loss), the same measure for every '
      f'variant. The over-fitting gap is read at the last step that every run of the pair '
      f'reached, not at the tested checkpoints (a run without dropout peaks far earlier). The '
      f'family: the {len(family)} claims below that this regime can test and that were '
      f'measured; their p-values are corrected together by Holm\'s method, and a claim agrees '
      f'only when its corrected p < {significance.ALPHA} and every interval lies on the '
      f'predicted side. A claim that turns on less than {study_plan.CLOSE_BLEU:g} BLEU with '
      f'fewer than {study_plan.MORE_SEEDS} seeds is inconclusive whatever its p. RMSNorm\'s '
      'claim (as good as LayerNorm, and faster; Zhang & Sennrich 2019) is one of no '
      'difference, which this test cannot confirm: its numbers are in the tables.', '']
  for v in verdicts:
    parts = '; '.join(
        f'{MEASURES[part.measure]} {e}, p={e.p_value:.3f} ({e.seeds} '
        f'seed{"s" if e.seeds != 1 else ""})'
        for part, e in zip(v.claim.parts, v.estimates) if e is not None)
    evidence = (f': {parts}; claim p={v.p_value:.3f}, Holm {v.adjusted:.3f}'
                if v.p_value is not None else f' ({v.why})' if v.why else '')
    out.append(f'- {v.claim.text} [{v.claim.variant}]{evidence} — **{v.verdict}**.')
  return out
