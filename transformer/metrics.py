"""Where training metrics go: a JSON-lines file, TensorBoard (tensorboardX), the log.

Each row of the file is one step's scalars. On resume the rows past the restored step are
dropped, so the file of a run killed and resumed equals that of an unbroken run; keys under
`time/` are wall-clock figures and the only ones that differ between two such runs. The run
folder (workdir.Workdir) says where the file and TensorBoard's folder are.
"""

import json
import math
import os
from typing import Mapping, Sequence

from absl import logging
import tensorboardX

from transformer import cli

WALL_CLOCK_PREFIX = 'time/'


def last_improvement(values: Sequence[float], min_delta: float = 0.0) -> int:
  """Index of the last value that beat the best before it by more than `min_delta` (the
  first always does; Keras' EarlyStopping rule); -1 for no values. With min_delta 0 it is
  the first occurrence of the maximum."""
  best, last = -math.inf, -1
  for index, value in enumerate(values):
    if value - min_delta > best:
      best, last = value, index
  return last


def evaluations_since_best(values: Sequence[float], min_delta: float = 0.0) -> int:
  """Evaluations after the last improvement (0 if the last one improved): what `patience`
  counts. Training and the report both read it here."""
  return len(values) - 1 - last_improvement(values, min_delta) if values else 0


def read_rows(path: str) -> list[dict]:
  """All rows of a metrics file, in order (empty if there is none)."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    lines = f.readlines()
  for number, line in enumerate(lines, 1):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if number < len(lines):
        raise cli.UserError(f'{path}:{number} is not a JSON row: {line[:80]!r}. Fix or delete '
                            'that line (the rows after it are kept).') from None
      logging.warning('Dropping the half-written last row of %s (killed mid-write).', path)
  return rows


class MetricWriter:
  """Appends scalars to the file and TensorBoard; a no-op on non-zero processes."""

  def __init__(self, path: str, tensorboard_dir: str, *, resume_step: int,
               enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    self._path = path
    rows = read_rows(path)
    kept = [row for row in rows if row['step'] <= resume_step]
    if len(kept) < len(rows):
      logging.info('Dropping %d rows of %s past the resumed step %d.', len(rows) - len(kept),
                   self._path, resume_step)
    # Forget what a killed run wrote after its checkpoint (the resumed run writes those steps
    # again) and any half-written last row; by rename, so that a kill while rewriting cannot
    # lose the rows before. Rows at or before the resumed step are always kept.
    with open(self._path + '.tmp', 'w') as f:
      f.writelines(json.dumps(row) + '\n' for row in kept)
    os.replace(self._path + '.tmp', self._path)
    self._tensorboard = tensorboardX.SummaryWriter(tensorboard_dir, purge_step=resume_step + 1)

  def write(self, step: int, scalars: Mapping[str, float], *, log: bool = True) -> None:
    """Writes one row; `log=False` keeps frequent rows out of the text log."""
    if not self._enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in sorted(scalars.items())}}
    with open(self._path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    for key, value in row.items():
      if key != 'step':
        self._tensorboard.add_scalar(key, value, global_step=step)
    if log:
      logging.info('step %d: %s', step, ', '.join(
          f'{k}={v:.4g}' for k, v in row.items() if k != 'step'))

  def close(self) -> None:
    if self._enabled:
      self._tensorboard.close()
