"""`iwslt2017_fr_en`: the IWSLT 2017 TED talks French->English release (WIT3, 2017-01-trnted).

Reads the official archive `fr-en.tgz` (or the Hugging Face copy `fr-en.zip`) from the manual
folder. Archives are opened with `tarfile`/`zipfile`, not with TFDS' extractor, which needs
TensorFlow. Splits: `train` (232,825 pairs in the full release), `validation` (dev2010, 890),
`test` (tst2010-tst2015 concatenated, 8,597) and each of `tst2010` ... `tst2015`.

Lines that cannot make a pair (an empty side, a segment present on one side only) are
skipped, counted and logged; anything that makes the alignment doubtful (different numbers
of training lines, bad UTF-8, a corrupt archive) is an error naming the file.
"""

import collections
import os
import re
import tarfile
import urllib.request
import zipfile
import zlib

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from transformer import cli
from transformer.datasets import array_record_builder

ARCHIVE_NAMES = ('fr-en.tgz', 'fr-en.zip')
DOWNLOAD_URL = (
    'https://huggingface.co/datasets/IWSLT/iwslt2017/resolve/'
    'c18a4f81a47ae6fa079fe9d32db288ddde38451d/data/2017-01-trnted/texts/fr/en/fr-en.zip')
TEST_SETS = tuple(f'tst{year}' for year in range(2010, 2016))

_DOC = re.compile(r'<doc\s[^>]*docid="([^"]*)"')
_SEG = re.compile(r'<seg\s+id="\s*([^"]*?)\s*"\s*>(.*?)</seg>', re.DOTALL)


class ArchiveMembers:
  """Name -> bytes of the files in a .tgz or .zip, keyed by base name (layout-agnostic)."""

  def __init__(self, path: str):
    self.path = path
    self._files: dict[str, bytes] = {}
    try:
      if path.endswith('.zip'):
        with zipfile.ZipFile(path) as archive:
          for info in archive.infolist():
            if not info.is_dir():
              self._files[os.path.basename(info.filename)] = archive.read(info)
      else:
        with tarfile.open(path, 'r:*') as archive:
          for member in archive:
            if member.isfile():
              self._files[os.path.basename(member.name)] = archive.extractfile(member).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
      raise ValueError(f'{path}: corrupt or unreadable archive ({e}). Delete it and fetch '
                       f'it again.') from e

  def text(self, name: str) -> str:
    """Returns the decoded file `name`, with an error naming it if absent or not UTF-8."""
    if name not in self._files:
      raise ValueError(f'{self.path}: has no file {name!r}; is it the fr-en release of '
                       f'IWSLT 2017 (2017-01-trnted)?')
    data = self._files[name]
    try:
      return data.decode('utf-8')
    except UnicodeDecodeError as e:
      line = data[:e.start].count(b'\n') + 1
      raise ValueError(f'{self.path}: {name}, line {line}: not UTF-8 ({e.reason}).') from e


def parse_train(fr_text: str, en_text: str, name: str) -> list[tuple[str, str]]:
  """Pairs the text lines of train.tags.fr-en.{fr,en}, dropping `<...>` metadata lines."""
  fr_lines, en_lines = fr_text.splitlines(), en_text.splitlines()
  if len(fr_lines) != len(en_lines):
    raise ValueError(f'{name}.fr has {len(fr_lines)} lines but {name}.en has {len(en_lines)}; '
                     f'the two sides cannot be aligned.')
  pairs, skipped = [], 0
  for number, (fr, en) in enumerate(zip(fr_lines, en_lines), start=1):
    fr, en = fr.strip(), en.strip()
    fr_meta, en_meta = fr.startswith('<'), en.startswith('<')
    if fr_meta != en_meta:
      raise ValueError(f'{name}, line {number}: metadata on one side only; the files are '
                       f'misaligned.')
    if fr_meta:
      continue
    if not fr or not en:
      skipped += 1
      continue
    pairs.append((fr, en))
  if skipped:
    logging.warning('%s: skipped %d lines with an empty side.', name, skipped)
  return pairs


def parse_segments(xml: str) -> dict[tuple[str, str], str]:
  """Returns {(docid, seg id): stripped text} of an IWSLT XML file."""
  segments = {}
  for doc in re.split(r'(?=<doc\s)', xml):
    match = _DOC.search(doc)
    if not match:
      continue
    for seg_id, text in _SEG.findall(doc):
      segments[(match.group(1), seg_id)] = text.strip()
  return segments


def parse_xml_pair(fr_xml: str, en_xml: str, name: str) -> list[tuple[str, str]]:
  """Aligns the segments of the two sides by (docid, seg id), in the French file's order."""
  fr_segments, en_segments = parse_segments(fr_xml), parse_segments(en_xml)
  if not fr_segments:
    raise ValueError(f'{name}: no <seg id="..."> segments found.')
  pairs, skipped = [], 0
  for key, fr in fr_segments.items():
    en = en_segments.get(key, '')
    if not fr or not en:
      skipped += 1
      continue
    pairs.append((fr, en))
  skipped_en = len(en_segments.keys() - fr_segments.keys())
  if skipped or skipped_en:
    logging.warning('%s: skipped %d segments with no or empty counterpart (%d only in the '
                    'English file).', name, skipped + skipped_en, skipped_en)
  return pairs


def read_splits(archive_path: str) -> dict[str, list[tuple[str, str]]]:
  """Returns every split of the release as (fr, en) pairs."""
  files = ArchiveMembers(archive_path)
  splits = {'train': parse_train(
      files.text('train.tags.fr-en.fr'), files.text('train.tags.fr-en.en'),
      f'{archive_path}: train.tags.fr-en')}

  def xml_split(name):
    prefix = f'IWSLT17.TED.{name}.fr-en'
    return parse_xml_pair(files.text(f'{prefix}.fr.xml'), files.text(f'{prefix}.en.xml'),
                          f'{archive_path}: {prefix}')

  splits['validation'] = xml_split('dev2010')
  for name in TEST_SETS:
    splits[name] = xml_split(name)
  splits['test'] = [pair for name in TEST_SETS for pair in splits[name]]
  return splits


def find_archive(manual_dir: str) -> str | None:
  for name in ARCHIVE_NAMES:
    path = os.path.join(manual_dir, name)
    if os.path.exists(path):
      return path
  return None


def download_archive(manual_dir: str) -> str:
  """Fetches the Hugging Face copy into `manual_dir`, or says what to put where."""
  path = os.path.join(manual_dir, 'fr-en.zip')
  try:
    os.makedirs(manual_dir, exist_ok=True)
    logging.info('Downloading %s to %s.', DOWNLOAD_URL, path)
    with urllib.request.urlopen(DOWNLOAD_URL, timeout=60) as response:
      data = response.read()
  except OSError as e:
    raise cli.UserError(
        f'The IWSLT 2017 fr-en archive is not in {manual_dir!r} and could not be downloaded '
        f'({e}). Put the official release file fr-en.tgz (WIT3 2017-01-trnted/texts/fr/en/) '
        f'or its copy fr-en.zip ({DOWNLOAD_URL}) into the folder {manual_dir!r} (config.'
        f'manual_dir; empty = <data_dir>/downloads/manual) and run again.') from e
  with open(path + '.tmp', 'wb') as f:
    f.write(data)
  os.replace(path + '.tmp', path)
  return path


class Iwslt2017FrEn(array_record_builder.ArrayRecordBuilder):
  """IWSLT 2017 TED talks, French->English."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # TFDS' own lookup of this file needs the `importlib_resources` backport; skip it.
  code_path = epath.Path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put fr-en.tgz (WIT3 2017-01-trnted/texts/fr/en/fr-en.tgz) or fr-en.zip '
      f'({DOWNLOAD_URL}) into the manual folder.')
  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'fr': tfds.features.Text(),
            'en': tfds.features.Text(),
        }),
        supervised_keys=('fr', 'en'),
        disable_shuffling=True,  # Keep the source order, for `load_pairs` and decoding.
        homepage='https://wit3.fbk.eu/2017-01',
    )

  def _split_generators(self, dl_manager):
    # `dl_manager.manual_dir` raises if the folder is missing, so read the path directly.
    manual_dir = os.fspath(dl_manager._manual_dir)  # pylint: disable=protected-access
    archive = find_archive(manual_dir) or download_archive(manual_dir)
    splits = read_splits(archive)
    counts = collections.OrderedDict((name, len(pairs)) for name, pairs in splits.items())
    logging.info('%s: pairs per split %s.', archive, dict(counts))
    return {name: self._generate_examples(pairs) for name, pairs in splits.items()}

  def _generate_examples(self, pairs):
    for index, (fr, en) in enumerate(pairs):
      yield index, {'fr': fr, 'en': en}
