"""The batches the speed benchmarks time: real packed ones, or the reference's fixed shape."""

import numpy as np

from transformer import input_pipeline

# The reference figure's batches (issue 7): 64 rows of 64 source and 64 target tokens.
FIXED_ROWS, FIXED_LENGTH = 64, 64


def packed_batches(config, count: int) -> list[dict[str, np.ndarray]]:
  """The first `count` training batches of the real pipeline (tokenizer trained if needed)."""
  tokenizer = input_pipeline.prepare(config)
  iterator = input_pipeline.make_train_iterator(config, tokenizer)
  return [next(iterator) for _ in range(count)]


def fixed_batches(config, rows: int, length: int, count: int) -> list[dict[str, np.ndarray]]:
  """Unpacked batches of random non-padding tokens (ids 1 .. vocab-1), no segments."""
  rng = np.random.default_rng(config.seed)
  make = lambda: rng.integers(1, config.vocab_size, (rows, length), dtype=np.int32)
  return [{'inputs': make(), 'targets': make()} for _ in range(count)]
