"""What the training-speed benchmarks run: their batches, and train.py's step on them."""

import functools

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from transformer import input_pipeline
from transformer import optim
from transformer import train_lib

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


def jax_train_step(config, batches):
  """(train.py's compiled step, a fresh replicated TrainState, the batches on the mesh)."""
  mesh = train_lib.make_mesh()
  model = train_lib.make_model(config, axis_name=train_lib.AXIS)
  tx = optim.make_optimizer(config)
  state = jax.jit(functools.partial(train_lib.init_state, config, train_lib.make_model(config),
                                    tx, (1, config.max_length)),
                  out_shardings=NamedSharding(mesh, P()))()
  device_batches = [train_lib.shard_batch(b, mesh) for b in batches]
  step = train_lib.compile_steps(config, model, tx, mesh).train.lower(
      state, device_batches[0]).compile()
  return step, state, device_batches
