"""One joint French+English sentencepiece vocabulary per (corpus, version, size).

Trained once on both sides of the training split and cached beside the prepared data
(`<data_dir>/<dataset>/<version>/spm_<vocab_size>.model` plus a `.json` that records what it
was made from), so every run on the same data shares the same ids. Ids: pad 0, eos 1, unk 2,
no bos (the decoder starts from pad, as in the Flax wmt example).
"""

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from typing import Iterable, Sequence

from absl import logging
import ml_collections
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from transformer import cli
from transformer import datasets

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
_TRAINER_SEED = 0


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A loaded sentencepiece model with the project's id conventions."""

  model_path: str
  processor: spm.SentencePieceProcessor

  @classmethod
  def load(cls, model_path: str) -> 'Tokenizer':
    processor = spm.SentencePieceProcessor(model_file=model_path)
    if (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) != (
        PAD_ID, EOS_ID, UNK_ID, -1):
      raise ValueError(f'{model_path}: expected ids pad={PAD_ID}, eos={EOS_ID}, unk={UNK_ID} '
                       f'and no bos; it was made with other settings.')
    return cls(model_path, processor)

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text`, without eos (callers append it where they need it)."""
    return self.processor.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.processor.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of `ids` up to the first eos, ignoring padding."""
    kept = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i != PAD_ID:
        kept.append(i)
    return self.processor.decode(kept)


def vocabulary_fingerprint(model_path: str) -> str:
  """12 hex digits of a sentencepiece model's content: its pieces, scores and settings.

  The file's own hash will not do: sentencepiece records the temporary folder it was trained
  in (trainer_spec.model_prefix), so the same vocabulary prepared twice differs in bytes.
  """
  model = sentencepiece_model_pb2.ModelProto()
  with open(model_path, 'rb') as f:
    model.ParseFromString(f.read())
  model.trainer_spec.ClearField('model_prefix')
  return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:12]


def _train(sentences: Iterable[str], vocab_size: int, model_path: str) -> None:
  """Trains into `model_path` atomically, so an interrupted run leaves no half model."""
  spm.set_random_generator_seed(_TRAINER_SEED)
  folder = os.path.dirname(model_path)
  with tempfile.TemporaryDirectory(dir=folder) as tmp:
    prefix = os.path.join(tmp, 'spm')
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(sentences),
          model_prefix=prefix,
          vocab_size=vocab_size,
          model_type='unigram',
          character_coverage=1.0,
          input_sentence_size=0,  # All sentences: no random sample, so no run-to-run change.
          shuffle_input_sentence=False,
          pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
          minloglevel=2,
      )
    except RuntimeError as e:
      limit = re.search(r'Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)',
                        str(e))
      if not limit:
        raise
      raise cli.UserError(f'config.vocab_size={vocab_size} is more pieces than the training '
                          f'text holds; give --config.vocab_size={limit.group(1)} or less.'
                          ) from None
    os.replace(prefix + '.model', model_path)


def load_or_train(config: ml_collections.ConfigDict) -> Tokenizer:
  """Returns the vocabulary of config.dataset_name/vocab_size, training it on first use.

  Raises ValueError if a cached vocabulary was made from other data or at another size.
  Several processes: let one call this first (e.g. process 0, then a barrier).
  """
  builder = datasets.build(config)
  folder = os.fspath(builder.data_dir)
  model_path = os.path.join(folder, f'spm_{config.vocab_size}.model')
  meta_path = os.path.join(folder, f'spm_{config.vocab_size}.json')
  train_size = builder.info.splits['train'].num_examples
  expected = {
      'dataset_name': config.dataset_name,
      'version': str(builder.version),
      'vocab_size': config.vocab_size,
      'train_pairs': train_size,
  }
  if os.path.exists(model_path):
    if not os.path.exists(meta_path):
      raise cli.UserError(f'{model_path} has no {os.path.basename(meta_path)} saying what it was '
                       f'made from; delete it to retrain.')
    with open(meta_path) as f:
      recorded = json.load(f)
    if recorded != expected:
      raise cli.UserError(f'{model_path} was made for {recorded}, not {expected}; delete it (and '
                       f'its .json) to retrain, or fix the config.')
  else:
    logging.info('Training a %d-piece sentencepiece model on %d %s training pairs.',
                 config.vocab_size, train_size, config.dataset_name)
    start = time.time()
    source = builder.as_data_source(split='train')

    def sentences():
      for record in source:
        yield record['fr'].decode('utf-8')
        yield record['en'].decode('utf-8')

    _train(sentences(), config.vocab_size, model_path)
    with open(meta_path, 'w') as f:
      json.dump(expected, f, indent=1)
    logging.info('Trained %s in %.1f s.', model_path, time.time() - start)
  tokenizer = Tokenizer.load(model_path)
  if tokenizer.vocab_size != config.vocab_size:
    raise cli.UserError(f'{model_path} has {tokenizer.vocab_size} pieces, config.vocab_size is '
                     f'{config.vocab_size}.')
  return tokenizer
