"""What the training-speed benchmarks run: their batches, and train.py's step on them."""

import numpy as np

from transformer import input_pipeline
from transformer import sharding
from transformer import steps

# The reference figure's batches: 64 rows of 64 source and 64 target tokens.
FIXED_ROWS, FIXED_LENGTH = 64, 64


def packed_batches(config, count: int) -> list[dict[str, np.ndarray]]:
  """The first `count` training batches of the real pipeline (tokenizer trained if needed)."""
  iterator = input_pipeline.make_train_iterator(
      config, input_pipeline.prepare(config, evaluate=False).train)
  return [next(iterator) for _ in range(count)]


def fixed_batches(config, rows: int, length: int, count: int) -> list[dict[str, np.ndarray]]:
  """Unpacked batches of random non-padding tokens (ids 1 .. vocab-1), no segments."""
  rng = np.random.default_rng(config.seed)
  make = lambda: rng.integers(1, config.vocab_size, (rows, length), dtype=np.int32)
  return [{'inputs': make(), 'targets': make()} for _ in range(count)]


def jax_train_step(config, batches):
  """(train.py's compiled step, a fresh replicated TrainState, the batches on the mesh)."""
  mesh = sharding.make_mesh()
  compiled = steps.compile_steps(config, mesh)
  state = compiled.init()
  device_batches = [sharding.shard_batch(b, mesh) for b in batches]
  step = compiled.train.lower(state, device_batches[0]).compile()
  return step, state, device_batches
