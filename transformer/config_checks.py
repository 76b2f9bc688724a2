"""Every config value checked before any work or write: one message per mistake.

`validate(config)` is what train.py (through training.train_and_evaluate) and the study run
first, so a typo or an out-of-range value fails in a second, with a message naming the field,
instead of after the data is built or with a traceback from deep inside JAX. `RULES` has one
entry per field of configs/base.py that takes a value (tests/test_bad_inputs.py checks that
none is missing and tries a bad value of each).
"""

import math
import os
from typing import Any, Callable

import ml_collections

from configs import base
from transformer import cli
from transformer import config_utils
from transformer import models
from transformer import norms
from transformer import optim

DATASETS = ('iwslt2017_fr_en', 'bible_fr_en')


def _integer(low: int, high: float = math.inf) -> tuple[Callable[[Any], bool], str]:
  ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
  return ok, f'an integer >= {low}' if high == math.inf else f'an integer in [{low}, {high}]'


def _number(low: float, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False) -> tuple[Callable[[Any], bool], str]:
  def ok(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return False
    return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  interval = f'{"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
  return ok, f'a number > {low}' if high == math.inf and low_open else (
      f'a number >= {low}' if high == math.inf else f'a number in {interval}')


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: v in choices), 'one of ' + ', '.join(repr(c) for c in choices)


def _folder_or_empty() -> tuple[Callable[[Any], bool], str]:
  ok = lambda v: isinstance(v, str) and not (v and os.path.exists(os.path.expanduser(v)) and
                                              not os.path.isdir(os.path.expanduser(v)))
  return ok, "a folder (or '' for the default), not a file"


_PROBABILITY = _number(0, 1, high_open=True)
_BETA = _number(0, 1, high_open=True)

# Field -> (test, what a good value is). The model's shape rules (head split) are checked by
# building the model and the schedule below.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    'scale': _one_of(*base.SCALES),
    'dataset_name': _one_of(*DATASETS),
    'data_dir': _folder_or_empty(),
    'manual_dir': _folder_or_empty(),
    'vocab_size': _integer(8),
    'max_length': _integer(2),
    'max_target_length': _integer(2),
    'batch_tokens': _integer(0),
    'batch_size': _integer(0),
    'grad_accum_steps': _integer(1),
    'eval_batch_size': _integer(1),
    'shuffle_buffer_seed_offset': _integer(0),
    'max_train_pairs': _integer(0),
    'model.vocab_size': _integer(8),
    'model.emb_dim': _integer(2),
    'model.num_heads': _integer(1),
    'model.num_layers': _integer(1),
    'model.qkv_dim': _integer(1),
    'model.mlp_dim': _integer(1),
    'model.max_len': _integer(2),
    'model.positions': _one_of(*models.POSITIONS),
    'model.dropout_rate': _PROBABILITY,
    'model.attention_dropout_rate': _PROBABILITY,
    'model.activation_dropout_rate': _PROBABILITY,
    'model.norm': _one_of(*sorted(norms.NORMS)),
    'model.norm_position': _one_of('pre', 'post'),
    'model.residual': _one_of(*models.RESIDUALS),
    'model.dtype': _one_of(*models.DTYPES),
    'model.attention_impl': _one_of('xla', 'einsum'),
    'model.batch_norm_axis_name': (lambda v: isinstance(v, str) and (v == '' or v.isidentifier()),
                                   'a mesh axis name or empty'),
    'label_smoothing': _PROBABILITY,
    'r_drop_alpha': _number(0),
    'weight_decay': _number(0),
    'learning_rate': _number(0, low_open=True),
    'lr_schedule': _one_of(*optim.SCHEDULES),
    'warmup_steps': _integer(0),
    'adam_b1': _BETA,
    'adam_b2': _BETA,
    'adam_eps': _number(0, low_open=True),
    'grad_clip_norm': _number(0),
    'seed': _integer(0, 2**32 - 1),
    'num_train_steps': _integer(0),
    'num_train_epochs': _number(0),
    'patience': _integer(0),
    'patience_min_delta': _number(0, 100),
    'average_checkpoints': _integer(0),
    'log_every_steps': _integer(1),
    'eval_every_steps': _integer(0),
    'checkpoint_every_steps': _integer(1),
    'diagnostics_every_steps': _integer(0),
    # 0 would let orbax delete every checkpoint, the ones of earlier runs too.
    'max_checkpoints_to_keep': _integer(1),
    'max_nonfinite_steps': _integer(1),
    'num_eval_bleu_sentences': _integer(0),
    'beam_size': _integer(1),
    'length_penalty': _number(0),
    'decode_length_ratio': _number(0),
    'decode_length_offset': _integer(0),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises cli.UserError naming the first field whose value cannot work."""
  flat = config_utils.flatten(config_utils.to_dict(config))
  for field, (ok, expected) in RULES.items():
    if field in flat and not ok(flat[field]):
      raise cli.UserError(f'config.{field} must be {expected}, got {flat[field]!r} '
                          f'(--config.{field}=...).')
  for row, name in (('max_length', 'source'), ('max_target_length', 'target')):
    if config[row] > config.model.max_len:
      raise cli.UserError(f'config.{row}={config[row]} ({name} tokens per row) exceeds '
                          f'config.model.max_len={config.model.max_len}, the longest sequence '
                          'the position table covers.')
  if config.decode_length_ratio == 0 and config.decode_length_offset == 0:
    raise cli.UserError('config.decode_length_ratio and decode_length_offset are both 0: no '
                        'output token would be allowed.')
  if config.model.batch_norm_axis_name and config.model.norm != 'batch_norm':
    raise cli.UserError('config.model.batch_norm_axis_name is set but config.model.norm is '
                        f'{config.model.norm!r}, not batch_norm.')
  if config.grad_accum_steps < 1:
    raise cli.UserError(f'config.grad_accum_steps must be at least 1, got '
                        f'{config.grad_accum_steps}.')
  if (config.batch_tokens > 0) == (config.batch_size > 0):
    raise cli.UserError('Set exactly one of config.batch_tokens (target positions per optimizer '
                        'step) and config.batch_size (rows per micro-batch); got '
                        f'{config.batch_tokens} and {config.batch_size}.')
  step_rows = config.grad_accum_steps * config.max_target_length
  if config.batch_tokens % step_rows:
    raise cli.UserError(
        f'config.batch_tokens={config.batch_tokens} must be a multiple of grad_accum_steps * '
        f'max_target_length = {step_rows} (e.g. '
        f'{max(1, round(config.batch_tokens / step_rows)) * step_rows}).')
  if not (config.num_train_steps or config.num_train_epochs):
    raise cli.UserError('Give config.num_train_steps > 0 or config.num_train_epochs > 0; got '
                        f'{config.num_train_steps} and {config.num_train_epochs}.')
  if config.average_checkpoints > config.max_checkpoints_to_keep:
    raise cli.UserError(f'config.average_checkpoints={config.average_checkpoints} must be at '
                        f'most max_checkpoints_to_keep={config.max_checkpoints_to_keep}: only '
                        'kept checkpoints can be averaged.')
  try:
    models.make_model(config)  # Unknown norm, head split, unknown fields, ...
    optim.make_schedule(config)
  except ValueError as e:
    raise cli.UserError(f'{e} (see configs/base.py).') from None
