"""What the data layer builds and how full its batches are, for both datasets.

  python -m benchmarks.data_stats [--batches=200]

For each dataset: the time to build the TFDS array_record files and to train the joint
sentencepiece vocabulary (both into a fresh temporary data_dir), the split sizes read back
through `tfds.data_source`, and for the training and validation pipelines the fraction of
source and target positions that hold real tokens and the distinct batch shapes.
`bible_fr_en` is the embedded corpus at the small config. `iwslt2017_fr_en` is built from an
archive in the official release layout made from the shipped tst2016 files (every split a
copy of those 1,159 pairs, as in the tests), at the full config's batch shape: it measures
the real builder and pipeline, not the statistics of the full release.
"""

import collections
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import machine
from configs import base
from transformer import datasets
from transformer import input_pipeline

_BATCHES = flags.DEFINE_integer('batches', 200, 'Training batches measured per dataset.')


def _iwslt_archive(manual_dir: str) -> None:
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'tests'))
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.write_archive(conftest.pathlib.Path(manual_dir), 'tgz', conftest.archive_files())


def _fill(batches, side: str) -> float:
  return float(np.mean([(b[f'{side}_segmentation'] > 0).mean() for b in batches]))


def measure(config, num_batches: int) -> dict:
  start = time.perf_counter()
  datasets.build(config)
  build_seconds = time.perf_counter() - start
  start = time.perf_counter()
  input_pipeline.prepare_vocabulary(config)
  tokenizer_seconds = time.perf_counter() - start
  splits = {s: len(datasets.load_pairs(config, s))
            for s in ('train', 'validation', 'test')}
  data = input_pipeline.prepare(config)
  examples = data.train
  target_tokens_per_pair = float(np.mean([len(e['targets']) for e in examples]))
  train = input_pipeline.make_train_iterator(config, examples)
  batches = [next(train) for _ in range(num_batches)]
  evaluation = data.eval_batches['validation']
  shapes = collections.Counter(v.shape for b in batches + evaluation for v in b.values())
  return {
      'splits (train/validation/test)': '/'.join(f'{n:,}' for n in splits.values()),
      'build (s)': f'{build_seconds:.1f}',
      'sentencepiece training (s)': f'{tokenizer_seconds:.1f} ({config.vocab_size:,} pieces)',
      'batch (rows x source/target tokens)': (
          f'{input_pipeline.micro_batch_rows(config)} x {config.max_length}/'
          f'{config.max_target_length}'),
      'train: target tokens per pair (eos included)': f'{target_tokens_per_pair:.2f}',
      'train: real source / target positions':
          f'{_fill(batches, "inputs"):.1%} / {_fill(batches, "targets"):.1%} '
          f'({num_batches} batches)',
      'validation: real source / target positions':
          f'{_fill(evaluation, "inputs"):.1%} / {_fill(evaluation, "targets"):.1%}',
      'distinct batch shapes (train + validation)': ', '.join(str(s) for s in shapes),
  }


def main(argv):
  del argv
  for key, value in machine.describe().items():
    print(f'{key}: {value}')
  with tempfile.TemporaryDirectory() as tmp:
    bible = base.get_config('small')
    bible.data_dir = os.path.join(tmp, 'tfds')
    iwslt = base.get_config('full')
    iwslt.data_dir = os.path.join(tmp, 'tfds')
    iwslt.manual_dir = os.path.join(tmp, 'manual')
    iwslt.vocab_size = 4_000  # 16k pieces cannot be learned from 1,159 pairs.
    _iwslt_archive(iwslt.manual_dir)
    results = {'bible_fr_en (small)': measure(bible, _BATCHES.value),
               'iwslt2017_fr_en (tst2016-layout archive)': measure(
                   iwslt, min(_BATCHES.value, 20))}
  names = list(results)
  print('| | ' + ' | '.join(names) + ' |')
  print('|---' * (len(names) + 1) + '|')
  for row in results[names[0]]:
    print(f'| {row} | ' + ' | '.join(r[row] for r in results.values()) + ' |')

if __name__ == '__main__':
  app.run(main)
