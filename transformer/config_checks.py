"""Every config value checked before any work or write: one message per mistake.

`validate(config)` is what train.py (through training.train_and_evaluate) and the study run
first, so a typo or an out-of-range value fails in a second, with a message naming the field,
instead of after the data is built or with a traceback from deep inside JAX.
"""

import ml_collections

from transformer import models
from transformer import optim


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first field whose value cannot work."""
  models.make_model(config)  # Unknown norm, residual, head split, ...
  optim.make_schedule(config)  # Unknown schedule.
  if config.batch_size < 1:
    raise ValueError(f'batch_size must be at least 1, got {config.batch_size}.')
  if config.num_train_steps < 0:
    raise ValueError(f'num_train_steps must be >= 0, got {config.num_train_steps}.')
