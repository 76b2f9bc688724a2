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
  if config.batch_size < 0:
    raise ValueError(f'batch_size must be >= 0, got {config.batch_size}.')
  if config.num_train_steps < 0:
    raise ValueError(f'num_train_steps must be >= 0, got {config.num_train_steps}.')
  if config.model.dtype not in models.DTYPES:
    raise ValueError(f'model.dtype must be one of {models.DTYPES}, got {config.model.dtype!r}.')
  if config.grad_accum_steps < 1:
    raise ValueError(f'grad_accum_steps must be at least 1, got {config.grad_accum_steps}.')
  if (config.batch_tokens > 0) == (config.batch_size > 0):
    raise ValueError('Set exactly one of batch_tokens (target positions per optimizer step) and '
                     f'batch_size (rows per micro-batch); got {config.batch_tokens} and '
                     f'{config.batch_size}.')
  step_rows = config.grad_accum_steps * config.max_target_length
  if config.batch_tokens < 0 or config.batch_tokens % step_rows:
    raise ValueError(f'batch_tokens {config.batch_tokens} must be a multiple of grad_accum_steps '
                     f'* max_target_length = {step_rows} (e.g. '
                     f'{max(1, round(config.batch_tokens / step_rows)) * step_rows}).')
  if config.num_train_epochs < 0 or not (config.num_train_steps or config.num_train_epochs):
    raise ValueError('Give num_train_steps > 0 or num_train_epochs > 0; got '
                     f'{config.num_train_steps} and {config.num_train_epochs}.')
  if config.patience < 0:
    raise ValueError(f'patience must be >= 0, got {config.patience}.')
  if not 0 <= config.average_checkpoints <= config.max_checkpoints_to_keep:
    raise ValueError(f'average_checkpoints {config.average_checkpoints} must be in [0, '
                     f'max_checkpoints_to_keep={config.max_checkpoints_to_keep}].')
