"""The verb-and-object rule on pieces, and the attention readings against hand-made weights."""

import numpy as np
import pytest

from transformer import verb_object


def texts(words):
  return [(w.text, w.pieces) for w in words]


def test_words_are_found_in_the_text_whichever_way_the_pieces_cut_it():
  pieces = ['▁Il', '▁bât', 'it', '▁l', "'", 'autel', '.']
  assert texts(verb_object.words_of(pieces)) == [
      ('il', [0]), ('bâtit', [1, 2]), ('l', [3]), ('autel', [5])]
  # A piece holding "l'" and the start of the next word belongs to both.
  assert texts(verb_object.words_of(["▁l'a", 'utel'])) == [('l', [0]), ('autel', [0, 1])]


def words(sentence):
  return verb_object.words_of(['▁' + w for w in sentence.split()])


def test_the_french_verb_must_be_followed_by_its_object_over_determiners_only():
  assert verb_object.find_french_pair(words('Il bâtit un autel')) == (1, 3)
  assert verb_object.find_french_pair(words('Il prit tous les fils')) == (1, 4)
  assert verb_object.find_french_pair(words('Il prit de tous les fils')) is None  # 3 between.
  assert verb_object.find_french_pair(words('Il bâtit pour autel')) is None  # Not a determiner.
  assert verb_object.find_french_pair(words('Un autel qu il bâtit')) is None  # Object first.
  # The first verb with an object counts, not the first verb.
  assert verb_object.find_french_pair(words('Il vit et prit le pain')) == (3, 5)


def test_every_pair_is_found_and_an_inverted_subject_is_no_object():
  assert verb_object.find_french_pairs(words('Il prit le pain et bâtit un autel')) == [
      (1, 3), (5, 7)]
  # After que/comme the noun behind the verb is its subject, past clitics and auxiliaries.
  assert verb_object.find_french_pairs(words("comme l a fait mon serviteur Job")) == []
  assert verb_object.find_french_pairs(words('ce que fit le roi')) == []
  # A subject before the verb: the noun after it is its object again.
  assert verb_object.find_french_pairs(words('ce qu il fit au roi')) == [(3, 5)]


def test_the_english_object_must_follow_the_english_verb():
  assert verb_object.find_english_pair(words('He built an altar there'), 'bâtit',
                                       'autel') == (1, 3)
  assert verb_object.find_english_pair(words('An altar he built'), 'bâtit', 'autel') is None
  assert verb_object.find_english_pair(words('He made an altar'), 'bâtit', 'autel') is None
  assert verb_object.find_english_pair(words('She took her son and her sons'), 'prit',
                                       'fils') == (1, 3)


def test_loops_are_translations_that_repeat_a_4_gram():
  assert verb_object.loops('He took his wife. He took his wife. He took his wife.')
  assert not verb_object.loops('He took his wife and his son.')


def test_the_diagonal_maps_first_to_first_and_last_to_last():
  assert verb_object.diagonal_span(0, 5, 9, 3) == [0, 1, 2]
  assert verb_object.diagonal_span(2, 5, 9, 3) == [3, 4, 5]  # round(2 * 8 / 4) = 4.
  assert verb_object.diagonal_span(4, 5, 9, 3) == [6, 7, 8]  # Kept inside the source.
  assert verb_object.diagonal_span(1, 4, 7, 1) == [2]


def causal_rows(rng, n):
  """Random decoder self-attention: row t spreads over keys 0..t."""
  weights = np.tril(rng.uniform(0.1, 1.0, (n, n)))
  return weights / weights.sum(1, keepdims=True)


def test_reading_on_hand_made_weights():
  rng = np.random.default_rng(0)
  cross = rng.dirichlet(np.ones(7), size=5)  # 5 outputs, 7 sources.
  decoder_self = causal_rows(rng, 5)
  # Object: sources 1-2, written by output 3; verb: output 1 (key 2), one key back.
  out = verb_object.reading(cross, decoder_self, [1, 2], 3, [1])
  assert out['cross_on_object'] == pytest.approx(cross[3, 1] + cross[3, 2])
  assert out['cross_object_ratio'] == pytest.approx((cross[3, 1] + cross[3, 2]) / (2 / 7))
  # The diagonal puts output 3 of 5 at source round(3 * 6 / 4) = 4 (5 if rounded up);
  # two pieces wide: sources 4 and 5.
  assert out['cross_diagonal_ratio'] == pytest.approx((cross[3, 4] + cross[3, 5]) * 7 / 2)
  assert not out['diagonal_overlaps_object']
  assert out['distance'] == 1
  assert out['self_verb_ratio'] == pytest.approx(decoder_self[3, 2] * 4)
  # Every row t >= 1 on key t - 1, each against its uniform 1 / (t + 1).
  below = np.diagonal(decoder_self, offset=-1)
  assert out['self_same_distance_ratio'] == pytest.approx(np.mean(below * np.arange(2, 6)))
  assert out['self_previous_token_ratio'] == pytest.approx(
      np.mean(np.diagonal(decoder_self) * np.arange(1, 6)))


def test_a_verb_just_before_its_object_is_the_previous_token():
  rng = np.random.default_rng(1)
  decoder_self = causal_rows(rng, 6)
  # Verb of two pieces (outputs 2 and 3), object written by output 4: keys 3 and 4.
  out = verb_object.reading(rng.dirichlet(np.ones(4), size=6), decoder_self, [2], 4, [2, 3])
  assert out['distance'] == 0
  assert out['self_on_verb'] == pytest.approx(decoder_self[4, 3] + decoder_self[4, 4])
  assert out['self_verb_ratio'] == pytest.approx(out['self_on_verb'] * 5 / 2)
  per_row = [(decoder_self[t, t] + decoder_self[t, t - 1]) * (t + 1) / 2 for t in range(1, 6)]
  assert out['self_same_distance_ratio'] == pytest.approx(np.mean(per_row))
  # Uniform rows are 1x uniform everywhere.
  uniform = np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None]
  flat = verb_object.reading(np.full((6, 4), 0.25), uniform, [2], 4, [2, 3])
  for key in ('cross_object_ratio', 'cross_diagonal_ratio', 'self_verb_ratio',
              'self_same_distance_ratio', 'self_previous_token_ratio'):
    assert flat[key] == pytest.approx(1.0)
