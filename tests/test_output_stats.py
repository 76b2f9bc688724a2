"""output_stats against counts made by hand and against what source use means."""

import pytest

from transformer import output_stats

REFERENCES = [f'the man {i} went down to the city of {i * 7} with his sons' for i in range(30)]


def test_a_translation_loops_when_a_word_4gram_comes_twice():
  assert output_stats.repeats_ngram('He took his wife . He took his wife .')
  assert not output_stats.repeats_ngram('a b c d a b c e')  # 'a b c' twice, no 4-gram.
  assert output_stats.repeats_ngram('a b a b', n=2)
  assert output_stats.repetition_rate(['a b c d a b c d', 'x y', 'p q r s', '']) == 0.25


def test_length_ratio_is_output_words_over_reference_words():
  hypotheses = [r.rsplit(' ', 3)[0] for r in REFERENCES]  # Three words fewer each.
  words = lambda lines: sum(len(line.split()) for line in lines)
  assert output_stats.length_ratio(hypotheses, REFERENCES) == pytest.approx(
      words(hypotheses) / words(REFERENCES))


def test_a_model_that_copies_the_references_uses_the_source():
  use = output_stats.source_use(REFERENCES, REFERENCES)
  assert use['bleu'] == pytest.approx(100.0)
  assert use['shuffled_bleu'] < use['bleu'] - output_stats.MIN_SOURCE_GAIN
  assert use['distinct'] == 1.0 and use['uses_source']


def test_one_string_for_every_source_scores_the_same_against_shuffled_references():
  constant = ['the man went down to the city with his sons'] * len(REFERENCES)
  use = output_stats.source_use(constant, REFERENCES)
  assert use['bleu'] > 10  # It shares many n-grams with every reference...
  assert use['shuffled_bleu'] == pytest.approx(use['bleu'])  # ...whatever the order.
  assert use['source_gain'] == pytest.approx(0.0, abs=1e-9)
  assert use['distinct'] == 1 / len(REFERENCES) and not use['uses_source']


def test_source_use_refuses_counts_that_differ():
  with pytest.raises(ValueError, match='2 translations for 30 references'):
    output_stats.source_use(['a', 'b'], REFERENCES)
