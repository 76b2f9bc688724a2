"""What a set of translations says beyond BLEU: looping, length, and whether it uses the source.

A model can keep finite losses and a non-zero BLEU while ignoring its input: it emits a few
frequent strings ("And the LORD said unto Moses,") for every source, and scores on n-grams the
references share. BLEU against the references alone cannot tell that from a weak translator;
BLEU against the same references in shuffled order can: a model that ignores the source
scores the same against both. No JAX here: the report and the study's rate choice read it.
"""

import collections
from typing import Sequence

import numpy as np
import sacrebleu

REPEAT_NGRAM = 4  # A translation "loops" when a word 4-gram occurs in it twice.
SHUFFLES = 5  # Shuffled orders of the references averaged for shuffled_bleu.
# A set of translations uses the source when it beats shuffled references by this many BLEU
# and most of its outputs differ: the collapsed runs of the first study scored the same
# against both (gain < 0.1) with 3-113 distinct outputs for 1,515 sentences.
MIN_SOURCE_GAIN = 1.0
MIN_DISTINCT = 0.5


def repeats_ngram(line: str, n: int = REPEAT_NGRAM) -> bool:
  """True when some word n-gram occurs twice in `line` ("He took. He took." for n=2)."""
  words = line.split()
  grams = collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
  return any(count > 1 for count in grams.values())


def repetition_rate(hypotheses: Sequence[str], n: int = REPEAT_NGRAM) -> float:
  """The fraction of translations that repeat a word n-gram."""
  return float(np.mean([repeats_ngram(h, n) for h in hypotheses])) if hypotheses else 0.0


def length_ratio(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """sacreBLEU's hypothesis/reference length ratio (its brevity penalty's input)."""
  return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).ratio


def source_use(hypotheses: Sequence[str], references: Sequence[str], *,
               shuffles: int = SHUFFLES, seed: int = 0) -> dict:
  """BLEU against the references and against them shuffled, distinct outputs, the verdict.

  Returns {'bleu', 'shuffled_bleu' (mean over `shuffles` permutations, seeded),
  'source_gain' (their difference), 'distinct' (distinct outputs / sentences),
  'uses_source' (source_gain >= MIN_SOURCE_GAIN and distinct >= MIN_DISTINCT)}.
  """
  hypotheses, references = list(hypotheses), list(references)
  if len(hypotheses) != len(references) or not hypotheses:
    raise ValueError(f'{len(hypotheses)} translations for {len(references)} references.')
  bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
  rng = np.random.default_rng(seed)
  shuffled = [sacrebleu.corpus_bleu(hypotheses, [[references[i] for i in order]]).score
              for order in (rng.permutation(len(references)) for _ in range(shuffles))]
  shuffled_bleu = float(np.mean(shuffled))
  distinct = len(set(hypotheses)) / len(hypotheses)
  return {'bleu': bleu, 'shuffled_bleu': shuffled_bleu, 'source_gain': bleu - shuffled_bleu,
          'distinct': distinct,
          'uses_source': bleu - shuffled_bleu >= MIN_SOURCE_GAIN and distinct >= MIN_DISTINCT}
