"""The learner's measurements on tiny trained workdirs, each against NumPy or an equivalence."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from transformer import datasets
from transformer import inference
from transformer import learner
from transformer import models
from transformer import translator as translator_lib
from transformer import verb_object


@pytest.fixture(scope='module')
def no_positions_workdir(bible_config, tmp_path_factory):
  return conftest.train_tiny(bible_config, os.fspath(tmp_path_factory.mktemp('no_positions')),
                             positions='none')


@pytest.fixture(scope='module')
def batch_norm_workdir(bible_config, tmp_path_factory):
  return conftest.train_tiny(bible_config, os.fspath(tmp_path_factory.mktemp('batch_norm')),
                             norm='batch_norm')


@pytest.fixture(scope='module')
def measured(tiny_workdir, no_positions_workdir, batch_norm_workdir, tmp_path_factory):
  """(experiment dir, the JSON learner.measure wrote there): measured once for the module."""
  experiment_dir = tmp_path_factory.mktemp('experiment')
  path = learner.measure(os.fspath(experiment_dir), translating=tiny_workdir,
                         baseline=tiny_workdir, batch_norm=batch_norm_workdir,
                         no_positions=no_positions_workdir, batch_norm_sentences=70,
                         lengths=(8, 16), repeats=1)
  with open(path) as f:
    return experiment_dir, json.load(f)


def test_select_sorts_candidates_into_looping_untranslated_and_qualifying(bible_tokenizer):
  tokenizer = bible_tokenizer
  encode = lambda text: tokenizer.encode(text) + [tokenizer.eos_id]
  source = encode('Il bâtit un autel.')
  outputs = [encode('He built an altar there.'),
             encode('He built an altar. He built an altar. He built an altar.'),
             encode('He made a house.')]
  qualifying, looping, untranslated = learner.select(
      tokenizer, [4, 9, 11], ['Il bâtit un autel.'] * 3, [source] * 3, outputs)
  assert [s['line'] for s in qualifying] == [4] and untranslated == 1
  assert [s['line'] for s in looping] == [9]
  sentence = qualifying[0]
  assert (sentence['verb'], sentence['object']) == ('bâtit', 'autel')
  assert (sentence['english_verb'], sentence['english_object']) == ('built', 'altar')
  piece = tokenizer.processor.id_to_piece
  # The pieces found spell the words, and the object's row is its first piece.
  assert ''.join(piece(source[i]) for i in sentence['source_object']).lstrip('▁') == 'autel'
  assert ''.join(piece(outputs[0][i]) for i in sentence['target_verb']).lstrip('▁') == 'built'
  assert piece(outputs[0][sentence['t_object']]).startswith('▁al')


def test_summarize_is_the_mean_and_sample_sd_over_sentences():
  keys = ('cross_object_ratio', 'cross_diagonal_ratio', 'self_verb_ratio',
          'self_same_distance_ratio', 'self_previous_token_ratio')
  rng = np.random.default_rng(0)
  values = rng.uniform(0, 3, (4, 2, len(keys)))  # 4 sentences, 2 layers.
  readings = [[dict(zip(keys, layer), diagonal_overlaps_object=s == 0, distance=s % 2)
               for layer in sentence] for s, sentence in enumerate(values)]
  out = learner.summarize(readings)
  assert len(out) == 2
  for layer, row in enumerate(out):
    for k, key in enumerate(keys):
      assert row[key] == pytest.approx(values[:, layer, k].mean())
      assert row[key + '_sd'] == pytest.approx(values[:, layer, k].std(ddof=1))
    assert row['object_above_diagonal'] == int(np.sum(values[:, layer, 0] > values[:, layer, 1]))
    assert row['diagonal_overlaps_object'] == 1 and row['verb_is_previous_token'] == 2
    assert row['sentences'] == 4


def test_attention_reading_accounts_for_every_candidate(measured, bible_config,
                                                      bible_tokenizer):
  out = measured[1]['attention']
  test = datasets.load_pairs(bible_config, 'test')
  assert out['split_sentences'] == len(test)
  # Candidates: the test sources with a verb and its object, the rule read on the text. A
  # source longer than the model's max_len is cut, and may lose its pair.
  words = lambda text: verb_object.words_of(['▁' + w for w in text.split()])
  has_pair = [bool(verb_object.find_french_pairs(words(fr))) for fr, _ in test]
  fits = [len(bible_tokenizer.encode(fr)) < conftest.MAX_LEN for fr, _ in test]
  assert 0 < sum(p and f for p, f in zip(has_pair, fits)) <= out['candidates'] <= sum(has_pair)
  assert len(out['looping']) + out['untranslated'] + len(out['sentences']) == out['candidates']
  assert all(verb_object.loops(s['translation']) for s in out['looping'])
  assert all(test[s['line'] - 1][0] == s['source'] for s in out['looping'] + out['sentences'])
  assert len(out['by_layer']) == (1 if out['sentences'] else 0)


def test_read_gives_the_reading_of_the_teacher_forced_maps(tiny_workdir):
  _, tokenizer, model, variables, _, _ = inference.load_trained(tiny_workdir)
  encode = lambda text: tokenizer.encode(text) + [tokenizer.eos_id]
  qualifying, _, _ = learner.select(tokenizer, [1], ['Elle enfanta un fils à Jacob.'],
                                    [encode('Elle enfanta un fils à Jacob.')],
                                    [encode('She bore Jacob a son.')])
  layers, entropy = learner.read(model, variables, qualifying[0])
  sentence = qualifying[0]
  inputs = jnp.asarray([sentence['source_ids']])
  targets = jnp.asarray([sentence['output_ids']])
  _, state = model.apply(variables, inputs, targets, train=False, mutable=['attention_weights'])
  cross = np.asarray(state['attention_weights']['decoder_layer_0']['cross_attention']['weights']
                     [0][0]).mean(0)  # [outputs, sources]
  t = sentence['t_object']
  expected = cross[t, sentence['source_object']].sum() * cross.shape[1] / len(
      sentence['source_object'])
  assert layers[0]['cross_object_ratio'] == pytest.approx(expected, rel=1e-5)
  assert all(0 <= e <= 1 + 1e-6 for values in entropy.values() for e in values)


def test_without_positions_both_word_orders_translate_alike(measured):
  out = measured[1]['word_order']
  assert out['no_positions']['positions'] == 'none'
  assert all(out['no_positions']['same'])  # Permutation-equivariant encoder: one translation.
  assert out['baseline']['positions'] == 'sinusoidal'
  assert len(out['baseline']['translations']) == len(learner.ORDER_PAIRS)
  assert out['baseline']['same'] == [a == b for a, b in out['baseline']['translations']]


def test_training_mode_is_evaluation_with_the_batch_statistics(batch_norm_workdir,
                                                               bible_config):
  """The no-dropout model in training mode equals evaluation with running averages
  replaced by the batch's own statistics (read back from the running-average update)."""
  _, tokenizer, model, variables, _, _ = inference.load_trained(batch_norm_workdir)
  variables = jax.device_get(variables)
  pairs = datasets.load_pairs(bible_config, 'validation')[:3]
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=1)
  pad = lambda rows: learner._padded(rows, max(map(len, rows)))  # pylint: disable=protected-access
  inputs = pad(translator.encode_sources([fr for fr, _ in pairs]))
  targets = pad(translator.encode_targets([en for _, en in pairs]))
  trained, updated = learner.batch_statistics_model(model).apply(
      variables, inputs, targets, train=True, mutable=['batch_stats'])
  momentum = 0.9  # norms.BatchNorm's: new = momentum * old + (1 - momentum) * batch.
  batch = jax.tree.map(lambda new, old: (new - momentum * old) / (1 - momentum),
                       updated['batch_stats'], variables['batch_stats'])
  evaluated = model.apply({**variables, 'batch_stats': batch}, inputs, targets, train=False)
  real = targets > 0
  np.testing.assert_allclose(np.asarray(trained)[real], np.asarray(evaluated)[real],
                             rtol=1e-3, atol=1e-3)
  running = model.apply(variables, inputs, targets, train=False)
  assert np.abs(np.asarray(running - trained)[real]).max() > 1e-3  # The statistics differ.


def test_batch_dependence_on_the_trained_batch_norm_model(batch_norm_workdir, bible_config):
  pairs = datasets.load_pairs(bible_config, 'validation')[:12]
  out = learner.batch_dependence(batch_norm_workdir, pairs, batch_sizes=(1, 2, 4), draws=3)
  by_size = out['by_size']
  assert [s['size'] for s in by_size] == [1, 2, 4] and by_size[0]['draws'] == 1
  # Evaluation ignores batch-mates: not one bit changes among batches of one shape, and
  # another shape changes only the rounding.
  assert all(s['running_moves'] == 0.0 for s in by_size), by_size
  assert all(s['running_vs_alone'] < 1e-4 for s in by_size), by_size
  assert by_size[0]['moves'] == 0.0  # Alone: nothing to move it.
  assert by_size[1]['moves'] > 0 and by_size[2]['moves'] > 0
  assert all(s['from_running'] > 0 for s in by_size)
  # The loss with running statistics: NumPy cross-entropy of each sentence decoded alone.
  _, tokenizer, model, variables, _, _ = inference.load_trained(batch_norm_workdir)
  variables = jax.device_get(variables)
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=1)
  total, tokens = 0.0, 0
  for (fr, en) in pairs:
    source, target = translator.encode_sources([fr])[0], translator.encode_targets([en])[0]
    logits = np.asarray(model.apply(variables, jnp.asarray([source]), jnp.asarray([target]),
                                    train=False), np.float64)[0]
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
    total -= log_probs[np.arange(len(target)), target].sum()
    tokens += len(target)
  assert out['loss_running'] == pytest.approx(total / tokens, rel=1e-4)
  assert len(out['loss_batch_statistics']) == 3


def test_batch_dependence_needs_a_batch_norm_model(tiny_workdir, bible_config):
  with pytest.raises(ValueError, match='not batch_norm'):
    learner.batch_dependence(tiny_workdir, datasets.load_pairs(bible_config, 'validation')[:4])


def test_recomputing_the_prefix_chooses_the_cached_tokens(tiny_workdir, bible_config):
  """Equivalence: the cache changes the cost, never the tokens; both equal the search's."""
  _, tokenizer, model, variables, _, _ = inference.load_trained(tiny_workdir)
  variables = jax.device_get(variables)
  fr = datasets.load_pairs(bible_config, 'test')[0][0]
  inputs = jnp.asarray([tokenizer.encode(fr)[:19] + [tokenizer.eos_id]])
  cached = np.asarray(learner.greedy_cached(model, variables, inputs, 20))
  recomputed = np.asarray(learner.greedy_recomputed(model, variables, inputs, 20))
  np.testing.assert_array_equal(cached, recomputed)  # Buckets 8, 16, 20: every branch used.
  assert learner.prefix_buckets(20) == [8, 16, 20]
  searched = translator_lib.BatchTranslator(model, tokenizer, batch_size=1).translate_ids(
      variables, [inputs[0].tolist()], translator_lib.SearchConfig(max_decode_len=20))[0]
  assert cached[0, :len(searched)].tolist() == searched  # The search stops at eos.


def test_decode_cost_is_measured_for_both_decodes(measured, tiny_workdir):
  experiment_dir, measurements = measured
  cost = measurements['decode_cost']
  assert [r['length'] for r in cost['by_length']] == [8, 16]
  assert cost['memory_measure'] == 'xla_memory_analysis'
  config = models.ModelConfig.from_config(
      inference.load_trained(tiny_workdir).config.model)
  for row in cost['by_length']:
    assert row['same_tokens']
    assert row['cached_seconds'] > 0 and row['recomputed_seconds'] > 0
    assert row['cache_bytes_formula'] == models.cache_bytes(
        config, batch=1, beam=1, source_len=row['length'], max_decode_len=row['length'])
    # The cache lives in the cached program's working buffers.
    assert row['cached_temp_bytes'] >= row['cache_bytes_formula']
    assert row['cached_argument_bytes'] == row['recomputed_argument_bytes'] > 0
  assert os.path.getsize(experiment_dir / 'learner' / cost['plot']) > 0


def test_measure_writes_every_measurement(measured):
  experiment_dir, measurements = measured
  assert set(measurements) == {'order_pairs', 'attention', 'word_order', 'batch_norm',
                               'decode_cost'}
  assert measurements['batch_norm']['sentences'] == 70
  assert [s['size'] for s in measurements['batch_norm']['by_size']] == list(
      learner.BATCH_SIZES)
  maps = experiment_dir / 'learner' / 'attention'
  assert measurements['attention']['maps'] == (len(os.listdir(maps)) if maps.exists() else 0)
