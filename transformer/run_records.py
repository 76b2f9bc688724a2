"""What the report reads of one finished run: its result, curves and translations, as a dict.

Every figure of the report comes from these records, which come only from files the run
wrote (config.json, metrics.jsonl, test_result.json, the hypotheses). No JAX.
"""

import math
import os
import re
from typing import Sequence

import numpy as np

from transformer import metrics
from transformer import plots
from transformer import workdir as workdir_lib

_LAYER = re.compile(r'^grad_norm/(encoder|decoder)_layer_(\d+)/')


def read_lines(path: str) -> list[str]:
  with open(path) as f:
    return f.read().splitlines()


def _at(rows: Sequence[dict], key: str, step: int) -> float:
  """`key` of the row of `step` that has it (NaN if none)."""
  return next((float(row[key]) for row in rows if row['step'] == step and key in row), math.nan)


def load_run(run: workdir_lib.Workdir) -> dict:
  """The run's record. 'peak_step' is where validation BLEU peaked (the checkpoint decoded on
  the test split), 'stop_step' the last step trained (by patience, or the budget's end);
  'eval_loss_at_peak' is read there."""
  rows = run.metrics()
  result = run.result() or {}
  config = run.config().to_dict() if run.has_config() else {}
  eval_steps, eval_loss = plots.series(rows, 'eval/loss')
  bleu_steps, bleu = plots.series(rows, 'eval/bleu')
  peak = int(bleu_steps[np.argmax(bleu)]) if len(bleu) else 0
  # The last evaluation that restarted patience (a gain of more than patience_min_delta).
  improved = int(bleu_steps[metrics.last_improvement(
      list(bleu), config.get('patience_min_delta', 0.0))]) if len(bleu) else 0
  params = [row['params/count'] for row in rows if 'params/count' in row]
  walls = [row['time/wall_seconds'] for row in rows if 'time/wall_seconds' in row]
  skipped = [row['eval/nonfinite_total'] for row in rows if 'eval/nonfinite_total' in row]
  split = result.get('split', 'test')  # The first study's results name no split: test.
  hypotheses = run.hypotheses_path(split=split)
  vocabulary = run.vocabulary_fingerprint()
  stop = max((row['step'] for row in rows), default=0)
  return {
      'dir': run.path, 'rows': rows, 'config': config, 'diverged': result.get('diverged', False),
      'split': split, 'bleu': result.get('bleu', math.nan), 'chrf': result.get('chrf', math.nan),
      'bleu_signature': result.get('bleu_signature', ''),
      'best_eval_loss': float(eval_loss.min()) if len(eval_loss) else math.nan,
      'best_step': int(eval_steps[eval_loss.argmin()]) if len(eval_loss) else 0,
      'early_eval_loss': float(eval_loss[0]) if len(eval_loss) else math.nan,
      'first_eval_step': int(eval_steps[0]) if len(eval_steps) else 0,
      'final_eval_loss': float(eval_loss[-1]) if len(eval_loss) else math.nan,
      'peak_step': peak, 'improved_step': improved, 'peak_eval_bleu': float(bleu.max()) if len(bleu) else math.nan,
      'eval_loss_at_peak': _at(rows, 'eval/loss', peak),
      'stop_step': stop, 'budget': config.get('num_train_steps', stop),
      # Ended by the budget with patience left: validation BLEU was still improving.
      'still_improving': bool(result) and stop >= config.get('num_train_steps', stop) and (
          stop - improved < config.get('patience', 0) * config.get('eval_every_steps', 0)),
      'learning_rate': config.get('learning_rate', math.nan),
      'layers': config.get('model', {}).get('num_layers', 0),
      'params': int(params[0]) if params else 0,
      'wall_seconds': walls[-1] if walls else math.nan,
      'skipped': int(skipped[-1]) if skipped else 0,
      'average': result.get('average', {}), 'test_sets': result.get('test_sets', {}),
      'code_version': result.get('code_version', 'unrecorded'),
      'vocabulary': vocabulary[:12] if vocabulary else 'unrecorded',
      'hypotheses': hypotheses if os.path.exists(hypotheses) else None,
      'finished': bool(result),
  }


def gap_at(run: dict, step: int) -> float:
  """Validation minus training NLL (both eval/: unsmoothed, without dropout) at `step`."""
  return _at(run['rows'], 'eval/loss', step) - _at(run['rows'], 'eval/train_loss', step)


def group(experiment: workdir_lib.ExperimentDir, names: Sequence[str]) -> dict[str, list[dict]]:
  """{name: its finished runs, seed order}; an unfinished run is not reported yet."""
  groups = {}
  for name in names:
    loaded = [load_run(run) for _, run in experiment.seeds(name)]
    groups[name] = [run for run in loaded if run['finished']]
  return groups


def seed_of(run: dict) -> int:
  return int(run['dir'].rsplit('_', 1)[1])


def hypotheses(run: dict) -> list[str]:
  return read_lines(run['hypotheses'])


def layer_grad_norms(rows: Sequence[dict]) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
  """{'encoder'|'decoder': {layer: (steps, gradient L2 norm of the whole layer)}}.

  The diagnostics log a norm per block of a layer (attention, feed-forward, their norms); a
  layer's is the root of the sum of their squares, the L2 norm of all its parameters'
  gradients together, as Xiong et al. (2020, Fig. 3) plot it.
  """
  squares = {}
  for row in rows:
    for key, value in row.items():
      match = _LAYER.match(key)
      if match:
        layer = squares.setdefault(match[1], {}).setdefault(int(match[2]), {})
        layer[row['step']] = layer.get(row['step'], 0.0) + float(value) ** 2
  return {stack: {index: (np.array(sorted(steps)), np.sqrt([steps[s] for s in sorted(steps)]))
                  for index, steps in sorted(layers.items())}
          for stack, layers in sorted(squares.items(), reverse=True)}
