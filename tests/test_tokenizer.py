"""The joint sentencepiece vocabulary: ids, round trip, caching, refusing a foreign model."""

import json
import os
import shutil

import pytest
from sentencepiece import sentencepiece_model_pb2

import conftest
from configs import base
from transformer import input_pipeline
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
  first = input_pipeline.prepare_vocabulary(iwslt_config)
  assert first.vocab_size == VOCAB
  folder = os.path.dirname(first.model_path)
  assert os.path.basename(first.model_path) == f'spm_{VOCAB}.model'
  assert folder.endswith(os.path.join('iwslt2017_fr_en', '1.0.0'))
  with open(os.path.join(folder, f'spm_{VOCAB}.json')) as f:
    assert json.load(f) == {'dataset_name': 'iwslt2017_fr_en', 'version': '1.0.0',
                            'vocab_size': VOCAB, 'train_pairs': 1_159}
  mtime = os.path.getmtime(first.model_path)
  second = input_pipeline.prepare_vocabulary(iwslt_config)
  assert os.path.getmtime(second.model_path) == mtime  # Loaded, not retrained.
  assert second.encode('Merci.') == first.encode('Merci.')


def test_a_vocabulary_prepared_again_has_the_same_bytes(iwslt_config, tmp_path):
  """The same corpus in another data_dir (another machine) gives the same file, byte for byte:
  sentencepiece's record of its temporary training folder is cleared."""
  first = input_pipeline.prepare_vocabulary(iwslt_config)
  other = iwslt_config.copy_and_resolve_references()
  other.data_dir = os.fspath(tmp_path / 'other')
  second = input_pipeline.prepare_vocabulary(other)
  assert first.model_path != second.model_path
  with open(first.model_path, 'rb') as a, open(second.model_path, 'rb') as b:
    assert a.read() == b.read()
  model = sentencepiece_model_pb2.ModelProto()
  with open(first.model_path, 'rb') as f:
    model.ParseFromString(f.read())
  assert not model.trainer_spec.HasField('model_prefix')


def test_fingerprint_ignores_the_training_folder_and_sees_the_pieces(iwslt_config, tmp_path):
  """A model written before the folder was cleared has the fingerprint of the one after."""
  tokenizer = input_pipeline.prepare_vocabulary(iwslt_config)
  model = sentencepiece_model_pb2.ModelProto()
  with open(tokenizer.model_path, 'rb') as f:
    model.ParseFromString(f.read())
  model.trainer_spec.model_prefix = '/tmp/tmpabc123/spm'
  legacy = tmp_path / 'legacy.model'
  legacy.write_bytes(model.SerializeToString())
  assert tokenizer_lib.file_sha256(legacy) != tokenizer_lib.file_sha256(tokenizer.model_path)
  assert tokenizer_lib.fingerprint(legacy) == tokenizer_lib.fingerprint(tokenizer.model_path)
  model.pieces[5].score += 0.5
  legacy.write_bytes(model.SerializeToString())
  assert tokenizer_lib.fingerprint(legacy) != tokenizer_lib.fingerprint(tokenizer.model_path)


def test_model_for_other_data_is_an_error(iwslt_config):
  model = input_pipeline.prepare_vocabulary(iwslt_config)
  meta = model.model_path.replace('.model', '.json')
  with open(meta) as f:
    recorded = json.load(f)
  recorded['train_pairs'] = 232_825
  with open(meta, 'w') as f:
    json.dump(recorded, f)
  with pytest.raises(ValueError, match='was made for'):
    input_pipeline.prepare_vocabulary(iwslt_config)


def test_model_of_other_size_is_an_error(iwslt_config):
  small = iwslt_config.copy_and_resolve_references()
  small.vocab_size = 300
  other = input_pipeline.prepare_vocabulary(small)
  wanted = input_pipeline.prepare_vocabulary(iwslt_config).model_path
  shutil.copy(other.model_path, wanted)  # A 300-piece model under the 437-piece name.
  with pytest.raises(ValueError, match='has 300 pieces'):
    input_pipeline.prepare_vocabulary(iwslt_config)
