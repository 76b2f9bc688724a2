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


def check_available(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any work, an IWSLT run that has neither the data nor a way to get it."""
  if config.dataset_name != 'iwslt2017_fr_en':
    return
  if tfds.builder(config.dataset_name, data_dir=data_dir(config)).is_prepared():
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


def data_source(config: ml_collections.ConfigDict, split: str):
  """Returns the random-access source of `split` ({'fr': bytes, 'en': bytes} records)."""
  builder = build(config)
  if split not in builder.info.splits:
    raise cli.UserError(f'{config.dataset_name} has no split {split!r}; it has '
                     f'{sorted(builder.info.splits)}.')
  return builder.as_data_source(split=split)


def load_pairs(config: ml_collections.ConfigDict, split: str) -> list[tuple[str, str]]:
  """Returns the (fr, en) pairs of `split` in the corpus' own order."""
  source = data_source(config, split)
  return [(r['fr'].decode('utf-8'), r['en'].decode('utf-8')) for r in source]
