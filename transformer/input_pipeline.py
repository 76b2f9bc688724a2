"""TFDS array_record -> tokenized, packed, fixed-shape batches (the Flax wmt format).

Every split is tokenized once, up front, into memory (the corpora here are at most a few
hundred thousand short pairs, seconds of sentencepiece time), so that the grain pipeline
below it is a pure index-based map over a list: exactly reproducible, and its iterator state
is a few integers however far into training it is.

A batch is a dict of int32 arrays with micro_batch_rows(config) // process_count rows, source
features config.max_length long and target features config.max_target_length long:
`inputs`, `targets` (each sentence followed by eos=1, then padding 0), and for packing
`inputs_segmentation`/`targets_segmentation` (1, 2, 3, ... per sentence in a row, 0 on
padding) and `inputs_position`/`targets_position` (0-based position within its sentence).
Training and evaluation batches have this one shape, so train/eval steps compile once.

Saving and restoring the training data position (mid-epoch), with orbax:

  import grain, orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(directory, item_names=('state', 'data'))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(train_iter)))
  ...
  train_iter = make_train_iterator(config, data.train)  # a fresh iterator, same config
  manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(state), data=grain.checkpoint.CheckpointRestore(train_iter)))

or without orbax: `state = train_iter.get_state()` (a small JSON-able dict) and later
`train_iter.set_state(state)`. Either way the resumed iterator yields exactly the batches
the unbroken one would have. In a multi-process run each process saves its own iterator.
"""

import dataclasses
import os

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from transformer import cli
from transformer import datasets
from transformer import tokenizer as tokenizer_lib

Batch = dict[str, np.ndarray]
# More bins than rows per batch let best-fit find a place for a short pair before it gives up
# on the round (more bins fill rows a little better, at more host memory).
_BINS_PER_ROW = 4
_RENAME = {
    'inputs': 'inputs', 'targets': 'targets',
    'inputs_segment_ids': 'inputs_segmentation', 'targets_segment_ids': 'targets_segmentation',
    'inputs_positions': 'inputs_position', 'targets_positions': 'targets_position',
}
FEATURES = tuple(_RENAME.values())
# The examples are already tokenized in memory, so reading one is a list lookup: grain's
# default read-ahead (16 threads, 500 elements) only adds bookkeeping that competes with XLA
# for the cores (benchmarks/loop_speed.py: 6x less host time per batch without it). The
# batches and the iterator's checkpoint state are the same either way.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
# Seeds the permutation that picks config.max_train_pairs pairs; apart from config.seed, so
# that every seed and variant of a study trains on the same subset.
_SUBSET_SEED = 20_170_612


@dataclasses.dataclass(frozen=True)
class Data:
  """A run's data, read and tokenized once, before the first step.

  `train`: the tokenized training pairs that fit their rows (eos included). `eval_batches`:
  the packed batches of each split the loss is evaluated on ('validation', and 'train' for
  the generalization gap), this process's share. `validation`: the (fr, en) pairs that
  validation BLEU decodes.
  """
  tokenizer: tokenizer_lib.Tokenizer
  train: list[dict[str, np.ndarray]]
  eval_batches: dict[str, list[Batch]]
  validation: list[tuple[str, str]]


def prepare_vocabulary(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
  """The dataset's vocabulary, building the dataset and training it on first use."""
  return _build(config)[1]


def _build(config: ml_collections.ConfigDict):
  """(the prepared TFDS builder, its vocabulary), each made once.

  In a multi-process run process 0 builds the dataset and trains the vocabulary while the
  others wait at a barrier, then they load what it wrote (data_dir must be shared): several
  processes writing the same TFDS folder or sentencepiece model would race.
  """
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      _vocabulary(datasets.build(config), config.vocab_size)
    multihost_utils.sync_global_devices('input_pipeline.prepare')
  builder = datasets.build(config)
  return builder, _vocabulary(builder, config.vocab_size)


def _vocabulary(builder, vocab_size: int) -> tokenizer_lib.Tokenizer:
  made_from = {'dataset_name': builder.name, 'version': str(builder.version),
               'vocab_size': vocab_size,
               'train_pairs': builder.info.splits['train'].num_examples}

  def sentences():
    for fr, en in datasets.split_pairs(builder, 'train'):
      yield fr
      yield en

  return tokenizer_lib.load_or_train(os.fspath(builder.data_dir), vocab_size, made_from,
                                     sentences)


def prepare(config: ml_collections.ConfigDict, *, process_index: int = 0,
            process_count: int = 1, evaluate: bool = True) -> Data:
  """Builds the dataset and vocabulary if needed, then reads and tokenizes what a run uses.

  The straight path of the data: datasets (TFDS, array_record) -> tokenizer (sentencepiece)
  -> here, each called once. `evaluate=False` skips the evaluation splits.
  """
  builder, tokenizer = _build(config)
  train_pairs = train_subset(config, datasets.split_pairs(builder, 'train'))
  train = _fitting(config, tokenize_pairs(train_pairs, tokenizer))
  if not evaluate:
    return Data(tokenizer, train, {}, [])
  validation = datasets.split_pairs(builder, 'validation')
  gap_pairs = _evenly_spaced(train_pairs, min(len(validation), len(train_pairs)))
  eval_batches = {
      split: _eval_batches(config, tokenize_pairs(pairs, tokenizer), split,
                           process_index=process_index, process_count=process_count)
      for split, pairs in (('validation', validation), ('train', gap_pairs))}
  return Data(tokenizer, train, eval_batches, validation)


def tokenize_pairs(
    pairs: list[tuple[str, str]], tokenizer: tokenizer_lib.Tokenizer) -> list[dict[str, np.ndarray]]:
  """Returns {'inputs', 'targets'} int32 arrays, each ending with eos."""
  eos = [tokenizer.eos_id]
  sources = tokenizer.encode_batch([fr for fr, _ in pairs])
  targets = tokenizer.encode_batch([en for _, en in pairs])
  return [{'inputs': np.asarray(s + eos, np.int32), 'targets': np.asarray(t + eos, np.int32)}
          for s, t in zip(sources, targets)]


def micro_batch_rows(config: ml_collections.ConfigDict) -> int:
  """Packed rows of one micro-batch, all processes together.

  config.batch_size, or with config.batch_tokens the rows that make batch_tokens target
  *positions* per optimizer step: batch_tokens / (grad_accum_steps * max_target_length).
  "Target tokens per step" is thus a capacity: packing fills rows with whole pairs, so a
  row's tail is padding and the real target tokens of a step are fewer (measured_fill).
  """
  if config.batch_tokens:
    return config.batch_tokens // (config.grad_accum_steps * config.max_target_length)
  return config.batch_size


def _check_batch_size(config: ml_collections.ConfigDict, process_count: int) -> int:
  rows = micro_batch_rows(config)
  if rows % process_count:
    raise cli.UserError(f'{rows} rows per micro-batch are not divisible by the '
                        f'{process_count} processes.')
  return rows // process_count


def _row_lengths(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Tokens per packed row of each side (the target row is shorter: English is terser)."""
  return {'inputs': config.max_length, 'targets': config.max_target_length}


def batch_shapes(config: ml_collections.ConfigDict, rows: int) -> dict[str, tuple[int, int]]:
  """The shape of every feature of a batch with `rows` rows."""
  lengths = _row_lengths(config)
  return {name: (rows, lengths[name.split('_')[0]]) for name in FEATURES}


def _pack_and_batch(dataset: grain.IterDataset, config: ml_collections.ConfigDict,
                    rows: int, *, drop_remainder: bool) -> grain.IterDataset:
  dataset = grain.experimental.BestFitPackIterDataset(
      dataset,
      length_struct=_row_lengths(config),
      num_packing_bins=rows * _BINS_PER_ROW,
      seed=config.seed + config.shuffle_buffer_seed_offset,
      shuffle_bins=drop_remainder,  # Shuffled for training; evaluation keeps corpus order.
  )
  dataset = dataset.batch(rows, drop_remainder=drop_remainder)
  return dataset.map(lambda batch: {_RENAME[k]: v for k, v in batch.items()})


def _fitting(config: ml_collections.ConfigDict,
             examples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
  """The training examples that fit their rows (eos included); the others are counted."""
  lengths = _row_lengths(config)
  kept = [e for e in examples if all(len(e[k]) <= n for k, n in lengths.items())]
  logging.info('%s train: %d pairs, %d skipped as longer than %d source or %d target tokens.',
               config.dataset_name, len(kept), len(examples) - len(kept),
               lengths['inputs'], lengths['targets'])
  if not kept:
    raise cli.UserError(f'No training pair of {config.dataset_name} fits in max_length '
                        f'{config.max_length} and max_target_length {config.max_target_length}.')
  return kept


def train_subset(config: ml_collections.ConfigDict,
                 pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
  """config.max_train_pairs of `pairs` drawn without replacement, in corpus order (0: all)."""
  wanted = config.max_train_pairs
  if not wanted:
    return pairs
  if wanted > len(pairs):
    raise cli.UserError(f'config.max_train_pairs={wanted} exceeds the {len(pairs)} pairs of '
                        f'the {config.dataset_name} train split; give at most {len(pairs)} '
                        '(or 0 for all).')
  chosen = np.random.default_rng(_SUBSET_SEED).permutation(len(pairs))[:wanted]
  return [pairs[i] for i in sorted(chosen)]


def measured_fill(config: ml_collections.ConfigDict, examples: list[dict[str, np.ndarray]],
                  num_batches: int = 20) -> float:
  """The fraction of target positions holding real tokens in the first training batches.

  Measured on a one-process iterator of the same config, so every process of a run gets the
  same number (the epoch budget must not differ between processes).
  """
  iterator = _train_iterator(config, examples, process_index=0, process_count=1)
  fills = [np.mean(next(iterator)['targets_segmentation'] > 0) for _ in range(num_batches)]
  return float(np.mean(fills))


def accumulation_group(micro_batches: list[Batch]) -> list[Batch]:
  """The micro-batches of one optimizer step, each with `step_tokens` added.

  `step_tokens[r]` is row r's real target tokens summed over all the micro-batches, so the
  psum of its sum over devices is the step's global token count (steps.train_step divides
  every micro-batch's loss by it). Rows stay where they are, so it shards like the batch.
  """
  step_tokens = sum(np.sum(b['targets'] > 0, axis=1, dtype=np.int32) for b in micro_batches)
  return [{**b, 'step_tokens': step_tokens} for b in micro_batches]


def make_train_iterator(config: ml_collections.ConfigDict,
                        examples: list[dict[str, np.ndarray]], *, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
  """Returns an endless iterator of packed (micro-)batches of `examples` for this process.

  `examples` is Data.train. Process `i` reads pairs i, i + n, i + 2n, ... (n =
  process_count), reshuffled every epoch with seed config.seed +
  config.shuffle_buffer_seed_offset. The iterator has get_state()/set_state(); see the
  module docstring for checkpoints.
  """
  return _train_iterator(config, examples, process_index=process_index,
                         process_count=process_count)


def _train_iterator(config: ml_collections.ConfigDict, kept: list[dict[str, np.ndarray]], *,
                    process_index: int, process_count: int) -> grain.DatasetIterator:
  rows = _check_batch_size(config, process_count)
  dataset = grain.MapDataset.source(kept)[process_index::process_count]
  # shuffle-then-repeat draws a new permutation for every epoch.
  dataset = dataset.shuffle(seed=config.seed + config.shuffle_buffer_seed_offset).repeat()
  dataset = _pack_and_batch(dataset.to_iter_dataset(_READ_OPTIONS), config, rows,
                            drop_remainder=True)
  return iter(dataset)


def _pad_rows(batch: Batch, rows: int) -> Batch:
  return {k: np.pad(v, ((0, rows - len(v)), (0, 0))) for k, v in batch.items()}


def _evenly_spaced(pairs: list, wanted: int) -> list:
  """`wanted` pairs spread evenly through `pairs`, first and last included.

  The training loss without dropout or smoothing is measured on as many training pairs as
  the validation split has, so that their difference is the generalization gap.
  """
  return [pairs[i] for i in np.linspace(0, len(pairs) - 1, wanted).astype(int)]


def _eval_batches(config: ml_collections.ConfigDict, examples: list[dict[str, np.ndarray]],
                  split: str, *, process_index: int, process_count: int) -> list[Batch]:
  """One deterministic pass over `examples` in training-shaped packed batches.

  Every pair is kept: a side longer than its row is truncated to the row, its last
  kept token replaced by eos, so the loss covers the whole split (BLEU decodes the pairs, not
  these). Missing rows of the last batch are all zeros (segmentation 0 = no loss). All
  processes get the same number of batches (padded with all-zero batches), so a collective
  eval step cannot wait on a process that has run out.
  """
  rows = _check_batch_size(config, process_count)
  lengths = _row_lengths(config)
  truncated = 0
  for e in examples:
    for key, length in lengths.items():
      if len(e[key]) > length:
        e[key] = np.concatenate([e[key][:length - 1], [tokenizer_lib.EOS_ID]]).astype(np.int32)
        truncated += 1
  if truncated:
    logging.info('%s %s: truncated %d sentences longer than their %d/%d-token rows.',
                 config.dataset_name, split, truncated, lengths['inputs'], lengths['targets'])
  shards = []
  for index in range(process_count):
    dataset = grain.MapDataset.source(examples)[index::process_count].to_iter_dataset(
        _READ_OPTIONS)
    batches = _pack_and_batch(dataset, config, rows, drop_remainder=False)
    shards.append([_pad_rows(b, rows) for b in batches])
  num_batches = max(len(s) for s in shards)
  own = shards[process_index]
  empty = {k: np.zeros(shape, np.int32) for k, shape in batch_shapes(config, rows).items()}
  return own + [empty] * (num_batches - len(own))
