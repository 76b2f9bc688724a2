"""The learner's measurements, each against a formula or NumPy, on tiny trained workdirs."""

import json
import math
import os

import numpy as np
import pytest

import conftest
from transformer import attention_maps
from transformer import inference
from transformer import learner
from transformer import models
from transformer import norms
from transformer import workdir as workdir_lib


SENTENCES = 70  # Validation sentences of the batch-statistics measurement.


@pytest.fixture(scope='module')
def no_positions_workdir(bible_config, tmp_path_factory):
  return conftest.train_tiny(bible_config, os.fspath(tmp_path_factory.mktemp('no_positions')),
                             positions='none')


@pytest.fixture(scope='module')
def measured(tiny_workdir, no_positions_workdir, tmp_path_factory):
  """(experiment dir, the JSON learner.measure wrote there): measured once for the module."""
  experiment_dir = tmp_path_factory.mktemp('experiment')
  path = learner.measure(os.fspath(experiment_dir), translating=tiny_workdir,
                         baseline=tiny_workdir, no_positions=no_positions_workdir,
                         sentences=SENTENCES)
  with open(path) as f:
    return experiment_dir, json.load(f)


def test_word_positions_join_the_pieces_of_a_word():
  pieces = ['▁Il', '▁man', 'ge', '▁du', '▁pain', '.', '</s>']
  assert learner.word_positions(pieces, 'mange') == [1, 2]
  assert learner.word_positions(pieces, 'pain') == [4]
  assert learner.word_positions(pieces, 'pomme') == []


def test_normalized_entropy_is_one_for_uniform_rows_and_zero_for_one_hot_ones():
  assert learner.normalized_entropy(np.full((3, 5), 0.2)) == pytest.approx(1.0)
  assert learner.normalized_entropy(np.eye(4)) == pytest.approx(0.0, abs=1e-9)
  rows = np.array([[0.5, 0.5, 0.0, 0.0]])
  assert learner.normalized_entropy(rows) == pytest.approx(math.log(2) / math.log(4))


def test_batch_norm_of_one_row_is_numpy_batch_norm_and_layer_norm_ignores_the_batch():
  rng = np.random.default_rng(0)
  rows = [rng.normal(2.0, 3.0, (n, 8)).astype(np.float32) for n in (5, 3, 7)]
  pads = rng.normal(0.0, 1.0, (7, 8)).astype(np.float32)
  real = np.concatenate(rows)  # Masked: only real tokens count.
  expected = (rows[0] - real.mean(0)) / np.sqrt(real.var(0) + 1e-5)
  np.testing.assert_allclose(learner.first_row_normalized(norms.BatchNorm, rows), expected,
                             rtol=1e-4, atol=1e-4)
  padded = np.concatenate([rows[0], pads[5:], rows[1], pads[3:], rows[2]])  # Unmasked: pads count.
  expected = (rows[0] - padded.mean(0)) / np.sqrt(padded.var(0) + 1e-5)
  np.testing.assert_allclose(learner.first_row_normalized(norms.BatchNorm, rows, pads),
                             expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(learner.first_row_normalized(norms.BatchNorm, rows, pads, length=12),
                             expected, rtol=1e-4, atol=1e-4)  # Masked beyond: the same.
  alone = learner.first_row_normalized(norms.LayerNorm, rows[:1])
  np.testing.assert_allclose(learner.first_row_normalized(norms.LayerNorm, rows), alone,
                             atol=1e-6)
  np.testing.assert_allclose(alone.mean(-1), 0.0, atol=1e-5)


def test_batch_statistics_move_batch_norm_not_layer_norm(measured):
  out = measured[1]['batch_statistics']
  assert out['sentences'] == SENTENCES
  assert out['batch_sizes'] == list(learner.BATCH_SIZES)
  assert max(out['layer_norm']) < 1e-5  # Per token: the batch cannot move it.
  assert out['batch_norm'][0] > 0.1  # One sentence's own statistics are far from all of them.
  assert out['batch_norm'][-1] < out['batch_norm'][0]  # More sentences, closer to all.
  assert 0 < out['padding']['pad_fraction'] < 1
  assert out['padding']['unmasked_vs_masked'] > 0


def test_memory_is_the_cache_formula_and_layers_x_heads_x_length_squared(tiny_workdir,
                                                                        tmp_path):
  out = learner.memory_by_length(tiny_workdir, os.fspath(tmp_path / 'memory.png'),
                                 lengths=(8, 16, 32))
  assert os.path.getsize(tmp_path / 'memory.png') > 0
  config = models.ModelConfig.from_config(workdir_lib.Workdir(tiny_workdir).config().model)
  assert out['cache_bytes'] == [models.cache_bytes(config, batch=1, beam=1, source_len=n,
                                                   max_decode_len=n) for n in (8, 16, 32)]
  # Encoder self, decoder self and cross: one float32 [heads, n, n] each, every layer.
  assert out['attention_bytes'] == [3 * config.num_layers * config.num_heads * n * n * 4
                                    for n in (8, 16, 32)]


def test_translates_object_matches_whole_words_in_any_case():
  assert learner.translates_object('He ate the Bread.', 'bread')
  assert not learner.translates_object('He ate breadcrumbs.', 'bread')
  assert not learner.translates_object('', 'bread')


def test_object_and_verb_outputs_are_their_english_words_else_the_most_aligned():
  # Sources: ▁Il ▁prit ▁sa ▁femme .; outputs: ▁He ▁took ▁his ▁wi fe . </s>
  pieces = ['▁He', '▁took', '▁his', '▁wi', 'fe', '.', '</s>']
  cross = np.full((7, 5), 0.1)
  cross[2, 3] = 0.9  # `▁his` reads "femme" most, but `▁wi` spells "wife".
  cross[0, 1], cross[5, 1] = 0.5, 0.8  # "prit": `.` reads it most, yet comes after the object.
  outputs = lambda verb, obj: learner.object_and_verb_outputs(
      cross, [1], [3], pieces, learner.VerbSentence('Il prit sa femme.', 'prit', 'femme', verb,
                                                    obj))
  assert outputs('took', 'wife') == {'object': 3, 'object_by': 'word', 'verb': 1,
                                     'verb_by': 'word'}
  # Without the words in the output, the outputs most on the French words stand for them.
  assert outputs('seized', 'woman') == {'object': 2, 'object_by': 'attention', 'verb': 0,
                                        'verb_by': 'attention'}
  assert outputs('took', 'he') == {'object': 0, 'object_by': 'word', 'verb': None,
                                   'verb_by': None}


def test_attention_reading_takes_the_object_row_of_the_maps(tiny_workdir, measured):
  experiment_dir, measurements = measured
  out = measurements['attention']
  config, tokenizer, model, variables, _, _ = inference.load_trained(tiny_workdir)
  assert out['maps'] == 3 * config.model.num_layers * config.model.num_heads
  maps = experiment_dir / 'learner' / 'attention'
  assert len(os.listdir(maps)) == out['maps']
  for entropies in out['entropy_by_layer'].values():
    assert all(0 <= e <= 1 + 1e-6 for e in entropies)
  candidate = next(c for c in learner.VERB_SENTENCES if c.sentence == out['sentence'])
  assert {key: out[key] for key in candidate._fields} == candidate._asdict()
  # The first candidate whose translation has the object, else the first of all.
  chosen = ([t['sentence'] for t in out['tried']].index(candidate.sentence)
            if out['translated_object'] else 0)
  assert out['tried'][chosen]['translation'] == out['translation']
  assert not any(learner.translates_object(t['translation'], c.english_object)
                 for t, c in zip(out['tried'][:chosen], learner.VERB_SENTENCES))
  assert out['translated_object'] == learner.translates_object(out['translation'],
                                                               candidate.english_object)
  source = tokenizer.encode(candidate.sentence) + [tokenizer.eos_id]
  target = [tokenizer.processor.piece_to_id(p) for p in out['target_pieces']]
  cross = attention_maps.attention_weights(model, variables, source, target)['cross'][-1].mean(0)
  verb = learner.word_positions(out['source_pieces'], candidate.verb)
  obj = learner.word_positions(out['source_pieces'], candidate.object)
  assert verb and obj  # The sentence's words are found in its pieces.
  spelled = learner.word_positions(out['target_pieces'], candidate.english_object)
  row = spelled[0] if spelled else int(np.argmax(cross[:, obj].sum(1)))
  assert out['object_output'] == out['target_pieces'][row]
  assert out['object_output_by'] == ('word' if spelled else 'attention')
  assert out['object_row_label'] == (
      attention_maps.BOS_PIECE if row == 0 else out['target_pieces'][row - 1])
  assert out['object_cross_on_verb'] == pytest.approx(float(cross[row, verb].sum()), abs=1e-6)
  assert out['uniform_cross_on_verb'] == len(verb) / len(source)


def test_without_positions_both_word_orders_translate_alike(measured):
  out = measured[1]['word_order']
  assert out['no_positions']['positions'] == 'none'
  assert out['no_positions']['same']  # Permutation-equivariant encoder: one translation.
  assert out['baseline']['positions'] == 'sinusoidal'
  assert len(out['baseline']['translations']) == len(learner.ORDER_SENTENCES)


def test_measure_writes_every_measurement_and_the_memory_plot(measured):
  experiment_dir, measurements = measured
  assert set(measurements) == {'verb_sentences', 'order_sentences', 'attention', 'word_order',
                               'batch_statistics', 'memory'}
  assert measurements['verb_sentences'] == [c.sentence for c in learner.VERB_SENTENCES]
  assert measurements['order_sentences'] == list(learner.ORDER_SENTENCES)
  assert os.path.getsize(experiment_dir / 'learner' / 'memory_by_length.png') > 0
  assert measurements['memory']['lengths'] == [n for n in learner.MEMORY_LENGTHS
                                               if n <= conftest.MAX_LEN]
