"""One joint French+English sentencepiece vocabulary per (corpus, version, size).

Trained once on both sides of the training split and cached beside the prepared data
(`<data_dir>/<dataset>/<version>/spm_<vocab_size>.model` plus a `.json` that records what it
was made from), so every run on the same data shares the same ids. Ids: pad 0, eos 1, unk 2,
no bos (the decoder starts from pad, as in the Flax wmt example).

The same sentences give the same file, byte for byte, on any machine: sentencepiece records
the folder it trained in (`trainer_spec.model_prefix`, a temporary folder here), and that
field is cleared before the model is written. `fingerprint` compares models by content, so
a vocabulary written by an older version (with the folder in it) still matches.
"""

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from typing import Callable, Iterable, Mapping, Sequence

from absl import logging
from google.protobuf import message
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from transformer import cli

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


def fingerprint(model_path: str) -> str:
  """SHA-256 of a sentencepiece model's content: its pieces, scores and settings.

  The training folder (`trainer_spec.model_prefix`) is left out, so a vocabulary prepared
  again elsewhere, or written before that field was cleared, has the same fingerprint.
  """
  with open(model_path, 'rb') as f:
    serialized = f.read()
  try:
    model = _without_training_folder(serialized)
  except message.DecodeError:  # Not a model: its bytes are all there is to compare.
    return 'unparsed-' + hashlib.sha256(serialized).hexdigest()
  return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def file_sha256(path: str) -> str:
  """SHA-256 of a file's bytes (how workdirs recorded their vocabulary before fingerprint)."""
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _without_training_folder(serialized: bytes) -> sentencepiece_model_pb2.ModelProto:
  model = sentencepiece_model_pb2.ModelProto()
  model.ParseFromString(serialized)
  model.trainer_spec.ClearField('model_prefix')
  return model


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
    with open(prefix + '.model', 'rb') as f:
      model = _without_training_folder(f.read())
    with open(prefix + '.clean', 'wb') as f:
      f.write(model.SerializeToString(deterministic=True))
    os.replace(prefix + '.clean', model_path)


def load_or_train(folder: str, vocab_size: int, made_from: Mapping[str, object],
                  sentences: Callable[[], Iterable[str]]) -> Tokenizer:
  """The `vocab_size`-piece vocabulary cached in `folder`, trained on `sentences()` first.

  `made_from` (the corpus, its version, the size, the number of pairs) is recorded beside
  the model; a cached model made from anything else is refused rather than reused.
  Several processes: let one call this first (e.g. process 0, then a barrier).
  """
  model_path = os.path.join(folder, f'spm_{vocab_size}.model')
  meta_path = os.path.join(folder, f'spm_{vocab_size}.json')
  expected = dict(made_from)
  if os.path.exists(model_path):
    if not os.path.exists(meta_path):
      raise cli.UserError(f'{model_path} has no {os.path.basename(meta_path)} saying what it '
                          'was made from; delete it to retrain.')
    with open(meta_path) as f:
      recorded = json.load(f)
    if recorded != expected:
      raise cli.UserError(f'{model_path} was made for {recorded}, not {expected}; delete it '
                          '(and its .json) to retrain, or fix the config.')
  else:
    logging.info('Training a %d-piece sentencepiece model on %s.', vocab_size, expected)
    start = time.time()
    _train(sentences(), vocab_size, model_path)
    with open(meta_path, 'w') as f:
      json.dump(expected, f, indent=1)
    logging.info('Trained %s in %.1f s.', model_path, time.time() - start)
  tokenizer = Tokenizer.load(model_path)
  if tokenizer.vocab_size != vocab_size:
    raise cli.UserError(f'{model_path} has {tokenizer.vocab_size} pieces, config.vocab_size is '
                        f'{vocab_size}.')
  return tokenizer
