"""The two TFDS builders: split sizes, exact pairs, and errors that name the culprit."""

import collections
import copy
import os

import pytest

import conftest
from configs import base
from transformer import cli
from transformer import datasets
from transformer.datasets import bible_fr_en
from transformer.datasets import iwslt2017_fr_en

BIBLE_SIZES = {'train': 28_581, 'validation': 1_006, 'test': 1_515}


def test_bible_split_sizes(bible_config):
  sizes = {s: len(datasets.load_pairs(bible_config, s)) for s in BIBLE_SIZES}
  assert sizes == BIBLE_SIZES
  assert sum(sizes.values()) == 31_102


def test_bible_known_pairs_and_order(bible_config):
  train = datasets.load_pairs(bible_config, 'train')
  assert train[0] == ('Au commencement, Dieu créa les cieux et la terre.',
                      'In the beginning God created the heavens and the earth.')
  # Genesis 1:2: the WEB's backtick apostrophe (God`s) is normalized.
  assert train[1][1].startswith('Now the earth was formless and empty.')
  assert "God's Spirit" in train[1][1]


def test_bible_text_is_clean():
  verses = bible_fr_en.read_verses()
  assert len(verses) == 31_102
  assert len({v[:3] for v in verses}) == 31_102
  for *_, fr, en in verses:
    assert fr and en
    assert not set('`[]\t') & set(fr + en)
    assert '(9:1)' not in fr


def test_bible_splits_hold_whole_chapters():
  verses = bible_fr_en.read_verses()
  splits = bible_fr_en.split_chapters(verses)
  assert not splits['train'] & splits['validation']
  assert not splits['train'] & splits['test']
  assert not splits['validation'] & splits['test']
  assert len(set.union(*splits.values())) == len({v[:2] for v in verses}) == 1_189
  counts = collections.Counter(
      name for book, chapter, *_ in verses for name, chapters in splits.items()
      if (book, chapter) in chapters)
  assert counts == BIBLE_SIZES


def _iwslt_config(tmp_path, kind):
  config = base.get_config('full')
  config.data_dir = os.fspath(tmp_path / 'tfds')
  config.manual_dir = os.fspath(tmp_path / 'manual')
  if kind:
    conftest.write_archive(tmp_path / 'manual', kind, conftest.archive_files())
  return config


@pytest.mark.parametrize('kind', ['tgz', 'zip'])
def test_iwslt_from_archive(tmp_path, kind):
  config = _iwslt_config(tmp_path, kind)
  fr_docs = conftest.xml_segments(conftest.FR_XML)
  en_docs = conftest.xml_segments(conftest.EN_XML)
  fr = [s for _, segs in fr_docs for s in segs]
  en = [s for _, segs in en_docs for s in segs]
  assert len(fr) == len(en) == 1_159
  expected = list(zip(fr, en))
  for split in ('train', 'validation') + tuple(f'tst{y}' for y in range(2010, 2016)):
    assert datasets.load_pairs(config, split) == expected, split
  test = datasets.load_pairs(config, 'test')
  assert len(test) == 6 * 1_159
  assert test[0] == (
      "L'histoire humaine est à un tournant. Notre espèce hésite à toucher les étoiles ou à "
      'perdre la planète qui est la sienne.',
      "We're at a tipping point in human history,  a species poised between gaining the stars "
      'and losing the planet we call home.')
  assert test[-1] == ('Merci.', 'Thank you.')
  assert not any(f.startswith('<') or e.startswith('<') for f, e in test)


def test_iwslt_train_drops_metadata_and_empty_lines():
  fr = 'h\n<url>u</url>\n<talkid>1</talkid>\nun\n\ndeux\ntrois\n'
  en = 'h\n<url>u</url>\n<talkid>1</talkid>\none\nlost\ntwo\n\n'
  pairs = iwslt2017_fr_en.parse_train(fr, en, 'x')
  assert pairs == [('h', 'h'), ('un', 'one'), ('deux', 'two')]  # Two empty-side lines skipped.
  with pytest.raises(ValueError, match='x.fr has 3 lines but x.en has 2'):
    iwslt2017_fr_en.parse_train('a\nb\nc\n', 'a\nb\n', 'x')


def test_iwslt_xml_aligned_by_docid_and_seg_id():
  fr = ('<doc docid="7" genre="l">\n<seg id="2"> deux </seg>\n<seg id="1"> un </seg>\n</doc>\n'
        '<doc docid="8">\n<seg id="1">huit</seg>\n<seg id="3">seul</seg>\n</doc>\n')
  en = ('<doc docid="8">\n<seg id="1">eight</seg>\n</doc>\n<doc docid="7">\n<seg id="1">one'
        '</seg>\n<seg id="2">two</seg>\n</doc>\n')
  assert iwslt2017_fr_en.parse_xml_pair(fr, en, 'x') == [
      ('deux', 'two'), ('un', 'one'), ('huit', 'eight')]


def test_iwslt_missing_archive_says_what_to_put_where(tmp_path, monkeypatch):
  monkeypatch.setattr(iwslt2017_fr_en, 'DOWNLOAD_URL', 'http://127.0.0.1:9/fr-en.zip')
  config = _iwslt_config(tmp_path, None)
  with pytest.raises(cli.UserError) as error:
    datasets.build(config)
  message = str(error.value)
  assert 'fr-en.tgz' in message and 'fr-en.zip' in message
  assert config.manual_dir in message


def test_iwslt_corrupt_archive_is_named(tmp_path):
  config = _iwslt_config(tmp_path, None)
  os.makedirs(config.manual_dir)
  path = os.path.join(config.manual_dir, 'fr-en.tgz')
  with open(path, 'wb') as f:
    f.write(b'not a tar file' * 100)
  with pytest.raises(ValueError, match=f'{path}: corrupt'):
    datasets.build(config)


def test_iwslt_bad_utf8_names_file_and_line(tmp_path):
  files = conftest.archive_files()
  files = copy.copy(files)
  files['fr-en/train.tags.fr-en.en'] = b'ok\nok\n\xff\xfe bad\n'
  conftest.write_archive(tmp_path, 'zip', files)
  with pytest.raises(ValueError, match=r'train.tags.fr-en.en, line 3: not UTF-8'):
    iwslt2017_fr_en.read_splits(os.fspath(tmp_path / 'fr-en.zip'))


def test_unknown_split_is_an_error(bible_config):
  with pytest.raises(ValueError, match="no split 'dev'"):
    datasets.load_pairs(bible_config, 'dev')


def test_plain_tfds_data_source_works_without_tensorflow(tmp_path):
  """The builders write array_record by default: TFDS' plain API needs no TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with pytest.raises(ImportError):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  source = tfds.data_source('bible_fr_en', split='validation', data_dir=os.fspath(tmp_path))
  assert len(source) == BIBLE_SIZES['validation']
  assert list(tmp_path.glob('bible_fr_en/*/*.array_record*'))
