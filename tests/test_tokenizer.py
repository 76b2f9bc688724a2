"""The joint sentencepiece vocabulary: ids, round trip, caching, refusing a foreign model."""

import json
import os
import shutil

import pytest

import conftest
from configs import base
from transformer import tokenizer as tokenizer_lib

VOCAB = 437  # Small and odd, so it cannot be confused with a default.


@pytest.fixture
def iwslt_config(tmp_path):
  config = base.get_config('full')
  config.data_dir = os.fspath(tmp_path / 'tfds')
  config.manual_dir = os.fspath(tmp_path / 'manual')
  config.vocab_size = VOCAB
  conftest.write_archive(tmp_path / 'manual', 'tgz', conftest.archive_files())
  return config


def test_ids_and_round_trip(bible_tokenizer):
  tok = bible_tokenizer
  assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (4_000, 0, 1)
  assert tok.processor.id_to_piece([0, 1, 2]) == ['<pad>', '</s>', '<unk>']
  assert tok.processor.bos_id() == -1
  text = "Au commencement, Dieu créa les cieux et la terre. God's Spirit"
  ids = tok.encode(text)
  assert ids and all(3 <= i < 4_000 for i in ids)  # No eos, pad or unk in known text.
  assert tok.decode(ids) == text
  assert tok.decode(ids + [1] + tok.encode('after eos')) == text
  assert tok.decode([0] + ids[:2] + [0] + ids[2:] + [0, 0]) == text
  assert tok.encode_batch([text, 'Jésus pleura.']) == [ids, tok.encode('Jésus pleura.')]


def test_cached_and_reused(iwslt_config):
  first = tokenizer_lib.load_or_train(iwslt_config)
  assert first.vocab_size == VOCAB
  folder = os.path.dirname(first.model_path)
  assert os.path.basename(first.model_path) == f'spm_{VOCAB}.model'
  assert folder.endswith(os.path.join('iwslt2017_fr_en', '1.0.0'))
  with open(os.path.join(folder, f'spm_{VOCAB}.json')) as f:
    assert json.load(f) == {'dataset_name': 'iwslt2017_fr_en', 'version': '1.0.0',
                            'vocab_size': VOCAB, 'train_pairs': 1_159}
  mtime = os.path.getmtime(first.model_path)
  second = tokenizer_lib.load_or_train(iwslt_config)
  assert os.path.getmtime(second.model_path) == mtime  # Loaded, not retrained.
  assert second.encode('Merci.') == first.encode('Merci.')


def test_training_is_deterministic(iwslt_config, tmp_path):
  first = tokenizer_lib.load_or_train(iwslt_config)
  other = iwslt_config.copy_and_resolve_references()
  other.data_dir = os.fspath(tmp_path / 'other')
  second = tokenizer_lib.load_or_train(other)
  # The model files differ only in the recorded (temporary) training path.
  def pieces(tok):
    return [(tok.processor.id_to_piece(i), tok.processor.get_score(i))
            for i in range(tok.vocab_size)]
  assert pieces(first) == pieces(second)


def test_model_for_other_data_is_an_error(iwslt_config):
  model = tokenizer_lib.load_or_train(iwslt_config)
  meta = model.model_path.replace('.model', '.json')
  with open(meta) as f:
    recorded = json.load(f)
  recorded['train_pairs'] = 232_825
  with open(meta, 'w') as f:
    json.dump(recorded, f)
  with pytest.raises(ValueError, match='was made for'):
    tokenizer_lib.load_or_train(iwslt_config)


def test_model_of_other_size_is_an_error(iwslt_config):
  small = iwslt_config.copy_and_resolve_references()
  small.vocab_size = 300
  other = tokenizer_lib.load_or_train(small)
  wanted = tokenizer_lib.load_or_train(iwslt_config).model_path
  shutil.copy(other.model_path, wanted)  # A 300-piece model under the 437-piece name.
  with pytest.raises(ValueError, match='has 300 pieces'):
    tokenizer_lib.load_or_train(iwslt_config)
