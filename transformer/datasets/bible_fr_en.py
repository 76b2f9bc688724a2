"""`bible_fr_en`: Louis Segond 1910 (fr) -> World English Bible (en), 31,102 verse pairs.

Read from `data/bible_fr_en.tsv.xz` in this package (made by scripts/make_bible_corpus.py),
so it builds offline in seconds. Validation and test hold whole chapters, so that no verse
of a held-out chapter (nor its neighbours' near-copies in parallel passages of the same
chapter) is seen in training. Chapters are ordered by a hash of their name, a choice that
depends on no library's random number generator and so never changes.
"""

import hashlib
import importlib.resources
import lzma

from etils import epath
import tensorflow_datasets as tfds

from transformer.datasets import array_record_builder

_DATA_FILE = 'bible_fr_en.tsv.xz'
# Held-out chapters are taken in hash order until each split has at least this many verses.
_MIN_TEST_PAIRS = 1_500
_MIN_VALIDATION_PAIRS = 1_000


def read_verses() -> list[tuple[int, int, int, str, str]]:
  """Returns (book, chapter, verse, fr, en) for every verse, in canonical order."""
  resource = importlib.resources.files('transformer.datasets') / 'data' / _DATA_FILE
  with resource.open('rb') as raw, lzma.open(raw, 'rt', encoding='utf-8') as f:
    header = f.readline().rstrip('\n').split('\t')
    if header != ['book', 'chapter', 'verse', 'fr', 'en']:
      raise ValueError(f'{_DATA_FILE}: unexpected header {header}.')
    verses = []
    for line_number, line in enumerate(f, start=2):
      fields = line.rstrip('\n').split('\t')
      if len(fields) != 5:
        raise ValueError(f'{_DATA_FILE}:{line_number}: expected 5 tab-separated fields.')
      book, chapter, verse, fr, en = fields
      verses.append((int(book), int(chapter), int(verse), fr, en))
  return verses


def split_chapters(
    verses: list[tuple[int, int, int, str, str]]) -> dict[str, set[tuple[int, int]]]:
  """Assigns every (book, chapter) to 'train', 'validation' or 'test'."""
  sizes: dict[tuple[int, int], int] = {}
  for book, chapter, *_ in verses:
    sizes[(book, chapter)] = sizes.get((book, chapter), 0) + 1
  order = sorted(sizes, key=lambda c: hashlib.sha256(f'{c[0]}:{c[1]}'.encode()).hexdigest())
  splits = {'train': set(), 'validation': set(), 'test': set()}
  counts = {'validation': 0, 'test': 0}
  for chapter in order:
    if counts['test'] < _MIN_TEST_PAIRS:
      name = 'test'
    elif counts['validation'] < _MIN_VALIDATION_PAIRS:
      name = 'validation'
    else:
      name = 'train'
    splits[name].add(chapter)
    if name in counts:
      counts[name] += sizes[chapter]
  return splits


class BibleFrEn(array_record_builder.ArrayRecordBuilder):
  """Parallel French-English Bible verses, split by whole chapters."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # TFDS' own lookup of this file needs the `importlib_resources` backport; skip it.
  code_path = epath.Path(__file__)
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
        homepage='https://worldenglish.bible/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The corpus ships inside the package.
    verses = read_verses()
    splits = split_chapters(verses)
    return {
        name: self._generate_examples(verses, chapters) for name, chapters in splits.items()
    }

  def _generate_examples(self, verses, chapters):
    for index, (book, chapter, _, fr, en) in enumerate(verses):
      if (book, chapter) in chapters:
        yield index, {'fr': fr, 'en': en}
