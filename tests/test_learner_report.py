"""The learner section from hand-made measurements: each number said, beside its control."""

import json
import math
import os

from transformer import learner_report
from transformer import workdir as workdir_lib


def layer(object_ratio, diagonal_ratio, above, **others):
  row = {'sentences': 5, 'cross_object_ratio': object_ratio, 'cross_object_ratio_sd': 0.5,
         'cross_diagonal_ratio': diagonal_ratio, 'cross_diagonal_ratio_sd': 0.25,
         'self_verb_ratio': 1.8, 'self_verb_ratio_sd': 0.3, 'self_same_distance_ratio': 1.7,
         'self_same_distance_ratio_sd': 0.2, 'self_previous_token_ratio': 2.2,
         'self_previous_token_ratio_sd': 0.1, 'object_above_diagonal': above,
         'diagonal_overlaps_object': 1, 'verb_above_same_distance': 3,
         'verb_is_previous_token': 2}
  return {**row, **others}


def measurements(root) -> dict:
  """What learner.measure writes, with round numbers; runs named under `root`."""
  sentence = {'line': 12, 'source': 'Il bâtit un autel.', 'translation': 'He built an altar.',
              'verb': 'bâtit', 'object': 'autel', 'english_verb': 'built',
              'english_object': 'altar'}
  return {
      'order_pairs': [['Pierre frappa Jean.', 'Jean frappa Pierre.'],
                      ['Caïn tua Abel.', 'Abel tua Caïn.']],
      'attention': {
          'workdir': os.fspath(root / 'baseline' / 'seed_0'), 'step': 3000,
          'split_sentences': 1515, 'candidates': 9, 'untranslated': 2,
          'looping': [{'line': 5, 'source': 'x', 'translation': 'the son of the son of the son'},
                      {'line': 7, 'source': 'y', 'translation': 'a b c d a b c d'}],
          'sentences': [sentence] * 5, 'maps': 36,
          'by_layer': [layer(1.2, 1.3, 2), layer(2.4, 1.1, 4)],
          'entropy_by_layer': {'encoder_self': [0.9, 0.5], 'decoder_self': [0.8, 0.4],
                               'cross': [0.7, 0.3]}},
      'word_order': {name: {'positions': positions, 'translations': pairs,
                            'same': [a == b for a, b in pairs]}
                     for name, positions, pairs in (
                         ('baseline', 'sinusoidal', [['Peter smote John.', 'John smote Peter.'],
                                                     ['Cain slew.', 'Cain slew.']]),
                         ('no_positions', 'none', [['Peter smote John.'] * 2,
                                                   ['Abel slew Cain.'] * 2]))},
      'batch_norm': {
          'workdir': os.fspath(root / 'batch_norm' / 'seed_0'), 'step': 2000, 'sentences': 256,
          'followed': 'Jésus pleura.', 'followed_tokens': 6,
          'by_size': [{'size': size, 'draws': 1 if size == 1 else 20, 'moves': moves,
                       'from_running': away, 'top1_changed': changed, 'running_moves': 0.0,
                       'running_vs_alone': 2e-6}
                      for size, moves, away, changed in ((1, 0.0, 0.8, 0.5),
                                                         (4, 0.2, 0.3, 0.25),
                                                         (64, 0.02, 0.05, 0.0))],
          'loss_batch_statistics': [5.5, 4.25, 4.125], 'loss_running': 4.0},
      'decode_cost': {
          'workdir': os.fspath(root / 'baseline' / 'seed_0'), 'step': 3000, 'repeats': 5,
          'device': 'cpu', 'memory_measure': 'xla_memory_analysis', 'plot': 'memory_by_length.png',
          'model': {'emb_dim': 128, 'num_layers': 3, 'num_heads': 4},
          'by_length': [
              {'length': 16, 'cache_bytes_formula': 2**19, 'cached_seconds': 0.01,
               'recomputed_seconds': 0.02, 'cached_temp_bytes': 2**20,
               'recomputed_temp_bytes': 2**21, 'cached_argument_bytes': 3 * 2**20,
               'recomputed_argument_bytes': 3 * 2**20, 'cached_output_bytes': 64,
               'recomputed_output_bytes': 64, 'same_tokens': True},
              {'length': 256, 'cache_bytes_formula': 2**23, 'cached_seconds': 0.16,
               'recomputed_seconds': 4.0, 'cached_temp_bytes': 2**24,
               'recomputed_temp_bytes': 2**26, 'cached_argument_bytes': 3 * 2**20,
               'recomputed_argument_bytes': 3 * 2**20, 'cached_output_bytes': 1024,
               'recomputed_output_bytes': 1024, 'same_tokens': True}]},
  }


def write(root, measured) -> workdir_lib.ExperimentDir:
  experiment = workdir_lib.ExperimentDir(os.fspath(root))
  os.makedirs(experiment.file(experiment.LEARNER), exist_ok=True)
  with open(experiment.file(experiment.LEARNER, experiment.LEARNER_RESULT), 'w') as f:
    json.dump(measured, f)
  return experiment


def section(root, measured, groups=None, runs=None) -> str:
  return '\n'.join(learner_report.lines(write(root, measured), groups or {}, runs or {}))


def test_no_measurements_no_section(tmp_path):
  assert learner_report.lines(workdir_lib.ExperimentDir(os.fspath(tmp_path)), {}, {}) == []


def test_attention_is_said_beside_its_controls(tmp_path):
  text = section(tmp_path, measurements(tmp_path))
  assert 'Read from `baseline/seed_0` (step 3000): of the 1,515 test sentences, 9 have' in text
  assert '2 translations loop and are skipped, 2 lack the English words, and **5 qualify**' in text
  assert 'test lines 5, 7; for instance line 5: “the son of the son of the son”' in text
  assert '| 1 | 2.40× ± 0.50 | 1.10× ± 0.25 | 4 of 5 | 1.80× ± 0.30 | 1.70× ± 0.20 | 2.20× ± 0.10 |' in text
  # Sign tests: 4 of 5 is p = 2 * (5 + 1) / 32 = 0.375; 3 of 5 is p = 1.
  assert ("attention to the object's source word is 2.40× uniform, against 1.10× for the "
          'diagonal control; it is the larger in 4 of 5 sentences (sign test p=0.375; the two '
          'spans overlap in 1). More sentences favour content than position, but 5 sentences '
          'cannot tell the two apart') in text
  assert ("self-attention on the verb's translation is 1.80× uniform, against 1.70× for any "
          'row at the same distance back (3 of 5 sentences above it, sign test p=1.000) and '
          "2.20× for the previous token; the verb's translation is the previous token in 2 of "
          '5.') in text
  assert '| cross | 0.70 | 0.30 |' in text
  assert '![cross](learner/attention/cross_layer1_head0.png)' in text


def test_attention_no_better_than_position_is_said_so(tmp_path):
  measured = measurements(tmp_path)
  measured['attention']['by_layer'][-1] = layer(1.2, 1.3, 2)
  text = section(tmp_path, measured)
  assert 'it is the larger in 2 of 5 sentences' in text
  assert 'this reading does not show attention to content' in text


def test_attention_to_content_is_said_when_the_sign_test_says_so(tmp_path):
  measured = measurements(tmp_path)
  measured['attention']['by_layer'][-1] = layer(2.4, 1.1, 15, sentences=18)
  text = section(tmp_path, measured)
  # 15 of 18: p = 2 * (C(18,15) + C(18,16) + C(18,17) + C(18,18)) / 2**18.
  p = 2 * sum(math.comb(18, k) for k in range(15, 19)) / 2**18
  assert f'it is the larger in 15 of 18 sentences (sign test p={p:.3f};' in text
  assert "The object's translation reads its source word beyond what its position" in text


def test_no_qualifying_sentence_is_said_so(tmp_path):
  measured = measurements(tmp_path)
  measured['attention'].update(sentences=[], by_layer=[], entropy_by_layer={}, maps=0,
                               looping=[], untranslated=9)
  text = section(tmp_path, measured)
  assert 'and **0 qualify**. No translation of a candidate loops.' in text
  assert 'No sentence qualifies' in text and 'What queries' not in text


def test_batch_norm_rows_and_reading(tmp_path):
  text = section(tmp_path, measurements(tmp_path))
  assert 'trained batch_norm run `batch_norm/seed_0` (best checkpoint, step 2000)' in text
  assert '| sentences per batch | 1 | 4 | 64 |' in text
  assert '| its logits move with batch-mates (relative change from their mean) | 0.000 | 0.200 | 0.020 |' in text
  assert '| its next-token choice differs from running statistics | 50.0% | 25.0% | 0.0% |' in text
  assert '| running statistics: largest change with batch-mates | 0 | 0 | 0 |' in text
  assert ("With running statistics the sentence's logits do not move at all whatever its "
          'batch-mates (largest change 0 among batches of one size; 2e-06 against the sentence '
          'alone') in text
  assert ('Validation loss is 4.000 with running statistics, against 5.500 with each '
          "sentence's own statistics and 4.125 in batches of 64.") in text
  measured = measurements(tmp_path)
  del measured['batch_norm']  # No batch_norm run: no section.
  assert 'Why LayerNorm' not in section(tmp_path, measured)


def test_decode_cost_rows_and_reading(tmp_path):
  text = section(tmp_path, measurements(tmp_path))
  assert "measured by XLA's memory analysis" in text and 'on cpu' in text
  assert '| 16 | 10.0 | 20.0 | 2.0× | 1.00 | 2.00 | 0.50 | yes |' in text
  assert '| 256 | 160.0 | 4000.0 | 25.0× | 16.00 | 64.00 | 8.00 | yes |' in text
  assert ("From 16 to 256 tokens (16× longer) the cached decode's time grows 16.0× and the "
          "recompute's 200.0×; at 256 tokens recomputing takes 25.0× as long. Working memory "
          'grows 16.0× with the cache and 32.0× without it.') in text
  assert '![decode cost](learner/memory_by_length.png)' in text


def test_word_order_and_learner_runs(tmp_path):
  runs = {'no_positions': {'best_eval_loss': 3.0, 'bleu': 1.5}}
  groups = {'baseline': [{'best_eval_loss': 2.5, 'bleu': 6.0, 'diverged': False}],
            'batch_norm': [{'bleu': 4.0, 'diverged': False}, {'bleu': 5.0, 'diverged': False}]}
  text = section(tmp_path, measurements(tmp_path), groups, runs)
  assert '| source | baseline (sinusoidal) | no_positions (none) |' in text
  assert '| Pierre frappa Jean. | Peter smote John. | Peter smote John. |' in text
  assert '| Jean frappa Pierre. | John smote Peter. | Peter smote John. (=) |' in text
  assert '| Abel tua Caïn. | Cain slew. (=) | Abel slew Cain. (=) |' in text
  assert ('baseline: one translation for both orders in 1 of 2; no_positions: one '
          'translation for both orders in 2 of 2.') in text
  assert "Without positions the best validation loss is 3.000 against the baseline's 2.500" in text
  assert "batch_norm variant reaches test BLEU 4.50 ± 0.71 against the baseline's 6.00" in text


def test_measurements_of_one_pair_written_before_pairs_still_report(tmp_path):
  old = measurements(tmp_path)
  old['order_sentences'] = old.pop('order_pairs')[0]
  old['word_order'] = {name: {**out, 'translations': out['translations'][0],
                              'same': out['same'][0]} for name, out in old['word_order'].items()}
  text = section(tmp_path, old)
  assert '| Jean frappa Pierre. | John smote Peter. | Peter smote John. (=) |' in text
  assert '1 pair of sentences' in text and 'one translation for both orders in 1 of 1.' in text
