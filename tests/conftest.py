"""Shared fixtures: the Bible prepared once, a small IWSLT-layout archive from real files."""

import atexit
import io
import os

# Two CPU devices for the whole session (set before anything imports jax), so that the
# data-parallel code paths run in every test, and one-vs-two-device equivalence can be checked.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=2').strip()
import pathlib
import re
import shutil
import tarfile
import tempfile
import zipfile

import pytest

# One persistent XLA cache for the session and the processes its tests start (they inherit
# the environment): many tests train, resume and decode the same tiny programs, and each is
# compiled once, then loaded. Every entry is kept however fast it compiled. Set
# JAX_ENABLE_COMPILATION_CACHE=false to compile everything, or give a
# JAX_COMPILATION_CACHE_DIR to keep the cache across sessions.
# The process that makes the folder removes it at exit (so test sessions leave nothing in /tmp).
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='jax_cache_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
# A size limit makes the cache take a file lock (filelock) around every read and write.
# Without one it writes an entry in place and reads without a lock, so a process could load a
# program another was still writing and abort in XLA ("Fatal Python error: Aborted").
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(8 * 2**30))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'iwslt17-ted-tst2016'
FR_XML = FIXTURES / 'IWSLT17.TED.tst2016.fr-en.fr.xml'
EN_XML = FIXTURES / 'IWSLT17.TED.tst2016.en-fr.en.xml'
XML_SETS = ('dev2010',) + tuple(f'tst{year}' for year in range(2010, 2016))
# Metadata lines as in the real train.tags files; the builder must drop them.
_META = ('<url>http://www.ted.com/talks/x</url>', '<keywords>talks</keywords>',
         '<speaker>A Speaker</speaker>', '<talkid>{docid}</talkid>', '<title>T</title>',
         '<description>TED Talk Subtitles and Transcript</description>')


def xml_segments(path: pathlib.Path) -> list[tuple[str, list[str]]]:
  """(docid, [segment texts]) of an IWSLT XML file, an independent reading for tests."""
  docs = []
  for line in path.read_text(encoding='utf-8').splitlines():
    if match := re.match(r'<doc docid="(\d+)"', line):
      docs.append((match.group(1), []))
    elif match := re.match(r'<seg id="\d+">(.*)</seg>', line):
      docs[-1][1].append(match.group(1).strip())
  return docs


def train_tags(docs: list[tuple[str, list[str]]]) -> str:
  """A train.tags file: each talk's metadata lines, then one segment a line."""
  lines = []
  for docid, segments in docs:
    lines.append(f'<doc docid="{docid}" genre="lectures">')
    lines += [' ' + m.format(docid=docid) for m in _META]
    lines += segments
    lines.append('</doc>')
  return '\n'.join(lines) + '\n'


def archive_files() -> dict[str, bytes]:
  """The release's files (fr-en/...), every XML set a copy of tst2016 under its name."""
  files = {
      'fr-en/train.tags.fr-en.fr': train_tags(xml_segments(FR_XML)).encode(),
      'fr-en/train.tags.fr-en.en': train_tags(xml_segments(EN_XML)).encode(),
      'fr-en/README': (FIXTURES / 'README.WIT3').read_bytes(),
  }
  for name in XML_SETS:
    files[f'fr-en/IWSLT17.TED.{name}.fr-en.fr.xml'] = FR_XML.read_bytes()
    files[f'fr-en/IWSLT17.TED.{name}.fr-en.en.xml'] = EN_XML.read_bytes()
  return files


def write_archive(folder: pathlib.Path, kind: str, files: dict[str, bytes]) -> pathlib.Path:
  """Writes `files` as folder/fr-en.tgz or folder/fr-en.zip."""
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / f'fr-en.{kind}'
  if kind == 'zip':
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
      for name, data in files.items():
        archive.writestr(name, data)
  else:
    with tarfile.open(path, 'w:gz') as archive:
      for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
  return path


@pytest.fixture(scope='session')
def bible_config(tmp_path_factory):
  """The small config on the embedded Bible, prepared once in a session folder."""
  from configs import base  # pylint: disable=g-import-not-at-top
  from transformer import datasets  # pylint: disable=g-import-not-at-top
  config = base.get_config('small')
  config.data_dir = os.fspath(tmp_path_factory.mktemp('tfds'))
  datasets.build(config)
  return config


@pytest.fixture(scope='session')
def bible_tokenizer(bible_config):
  """The real 4k vocabulary of the small config (a few seconds to train)."""
  from transformer import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.prepare_vocabulary(bible_config)


# A 1+1-layer, 16-wide model on 4 x 32/28-token batches, no evaluation: seconds a run on a CPU.
TINY = {
    'batch_size': 4, 'max_length': 32, 'max_target_length': 28, 'model.emb_dim': 16,
    'model.qkv_dim': 16, 'model.mlp_dim': 32, 'model.num_heads': 2, 'model.num_layers': 1,
    'eval_every_steps': 0, 'checkpoint_every_steps': 2, 'diagnostics_every_steps': 0,
    'log_every_steps': 1,
}


def tiny_config(data_dir: str, **overrides):
  """The small config with TINY and `overrides` ('model.norm'-style keys) applied."""
  from configs import base  # pylint: disable=g-import-not-at-top
  from transformer import config_utils  # pylint: disable=g-import-not-at-top
  config = base.get_config('small')
  config.data_dir = data_dir
  config_utils.apply_overrides(config, {**TINY, **overrides})
  return config


MAX_LEN = 48  # tiny_workdir's max_len: decoding buckets 16, 32 and 48.


def train_tiny(bible_config, path: str, **model_fields) -> str:
  """Trains a 2-step tiny model into `path` (one evaluation, at the end); returns `path`."""
  from transformer import training  # pylint: disable=g-import-not-at-top
  config = bible_config.copy_and_resolve_references()
  config.update(dict(num_train_steps=2, batch_size=4, max_length=32, max_target_length=28,
                     eval_every_steps=2, checkpoint_every_steps=2, diagnostics_every_steps=0,
                     num_eval_bleu_sentences=4))
  config.model.update(dict(emb_dim=16, qkv_dim=16, mlp_dim=32, num_heads=2, num_layers=1,
                           max_len=MAX_LEN, **model_fields))
  training.train_and_evaluate(config, path)
  return path


@pytest.fixture(scope='session')
def tiny_workdir(bible_config, tmp_path_factory):
  """A workdir trained for 2 steps at a tiny size (made once per session)."""
  return train_tiny(bible_config, os.fspath(tmp_path_factory.mktemp('tiny_workdir')))


# The slowest modules first (measured with --durations): with two workers taking whole
# modules in order, a long module handed out last would run on alone at the end.
SLOW_FIRST = ('test_full_path.py', 'test_study.py', 'test_fault_injection.py',
              'test_multiprocess.py', 'test_full_scale.py', 'test_training.py', 'test_learner.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: order kept within.
