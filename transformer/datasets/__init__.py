"""TFDS builders for the project's corpora; importing this package registers them."""

from transformer.datasets import bible_fr_en  # pylint: disable=unused-import
from transformer.datasets import iwslt2017_fr_en  # pylint: disable=unused-import

import os

from absl import logging
import ml_collections
import tensorflow_datasets as tfds



def data_dir(config: ml_collections.ConfigDict) -> str:
  """Returns the TFDS data_dir in use: config.data_dir, else TFDS' default."""
  return os.path.expanduser(config.data_dir or tfds.core.constants.DATA_DIR)


def manual_dir(config: ml_collections.ConfigDict) -> str:
  """Returns the folder for manually downloaded archives: config.manual_dir, else TFDS'."""
  return os.path.expanduser(
      config.manual_dir or os.path.join(data_dir(config), 'downloads', 'manual'))


def build(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the builder of config.dataset_name, preparing its array_record files once."""
  builder = tfds.builder(config.dataset_name, data_dir=data_dir(config))
  if not builder.is_prepared():
    logging.info('Preparing %s in %s.', config.dataset_name, builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir(config)))
  return builder


def data_source(config: ml_collections.ConfigDict, split: str):
  """Returns the random-access source of `split` ({'fr': bytes, 'en': bytes} records)."""
  builder = build(config)
  if split not in builder.info.splits:
    raise ValueError(f'{config.dataset_name} has no split {split!r}; it has '
                     f'{sorted(builder.info.splits)}.')
  return builder.as_data_source(split=split)


def load_pairs(config: ml_collections.ConfigDict, split: str) -> list[tuple[str, str]]:
  """Returns the (fr, en) pairs of `split` in the corpus' own order."""
  source = data_source(config, split)
  return [(r['fr'].decode('utf-8'), r['en'].decode('utf-8')) for r in source]
