"""TFDS builders for the project's corpora; importing this package registers them."""

from transformer.datasets import bible_fr_en  # pylint: disable=unused-import
from transformer.datasets import iwslt2017_fr_en  # pylint: disable=unused-import

import os
import socket
import urllib.parse

from absl import logging
import ml_collections
import tensorflow_datasets as tfds

from transformer import cli


def data_dir(config: ml_collections.ConfigDict) -> str:
  """Returns the TFDS data_dir in use: config.data_dir, else TFDS' default."""
  return os.path.expanduser(config.data_dir or tfds.core.constants.DATA_DIR)


def manual_dir(config: ml_collections.ConfigDict) -> str:
  """Returns the folder for manually downloaded archives: config.manual_dir, else TFDS'."""
  return os.path.expanduser(
      config.manual_dir or os.path.join(data_dir(config), 'downloads', 'manual'))


def is_prepared(config: ml_collections.ConfigDict) -> bool:
  """Whether the dataset's files are there, asked of the builder's class.

  An instance of a builder whose data is missing logs a warning when it is made ("has no
  dataset_info.json"), which a dry run that only asks would repeat once a run.
  """
  builder_cls = tfds.builder_cls(config.dataset_name)
  return os.path.exists(os.path.join(data_dir(config), config.dataset_name,
                                     str(builder_cls.VERSION), 'dataset_info.json'))


def check_available(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any work, an IWSLT run that has neither the data nor a way to get it."""
  if config.dataset_name != 'iwslt2017_fr_en':
    return
  if is_prepared(config):
    return
  folder = manual_dir(config)
  if iwslt2017_fr_en.find_archive(folder):
    return
  host = urllib.parse.urlparse(iwslt2017_fr_en.DOWNLOAD_URL).hostname
  try:
    socket.create_connection((host, 443), timeout=5).close()
  except OSError:
    raise cli.UserError(
        f'The IWSLT 2017 fr-en archive is not in {folder!r} and {host} cannot be reached (no '
        'network?). Put fr-en.tgz or fr-en.zip there (config.manual_dir), or train the CPU '
        'scale on the embedded Bible (--config=configs/<variant>.py:small).') from None
  logging.warning('Downloading the IWSLT 2017 fr-en archive into %s, then preparing it.', folder)


def build(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the builder of config.dataset_name, preparing its array_record files once."""
  builder = tfds.builder(config.dataset_name, data_dir=data_dir(config))
  if not builder.is_prepared():
    logging.info('Preparing %s in %s.', config.dataset_name, builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir(config)))
  return builder


def split_pairs(builder: tfds.core.DatasetBuilder, split: str) -> list[tuple[str, str]]:
  """The (fr, en) pairs of a prepared builder's `split`, in the corpus' own order."""
  if split not in builder.info.splits:
    raise cli.UserError(f'{builder.name} has no split {split!r}; it has '
                        f'{sorted(builder.info.splits)}.')
  return [(r['fr'].decode('utf-8'), r['en'].decode('utf-8'))
          for r in builder.as_data_source(split=split)]


def load_pairs(config: ml_collections.ConfigDict, split: str) -> list[tuple[str, str]]:
  """The (fr, en) pairs of `split` of config.dataset_name, preparing it if needed."""
  return split_pairs(build(config), split)
