"""PNG plots a person can look at, drawn from metrics.jsonl rows (matplotlib, no display)."""

import os
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the rows that have `key`."""
  points = [(row['step'], row[key]) for row in rows if key in row]
  if not points:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*points)
  return np.asarray(steps), np.asarray(values, dtype=float)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average (the first points average what there is)."""
  if window <= 1 or len(values) == 0:
    return values
  cumulative = np.cumsum(np.insert(values, 0, 0.0))
  counts = np.minimum(np.arange(1, len(values) + 1), window)
  return (cumulative[1:] - cumulative[np.maximum(np.arange(1, len(values) + 1) - window, 0)]
          ) / counts


def _save(fig, path: str, dpi: int) -> str:
  """Tight layout, then the PNG at `path`; closes the figure."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def _save_with_legend(fig, ax, path: str) -> str:
  """Grid and legend, then `_save`."""
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path, dpi=120)


def plot_curves(runs: Mapping[str, Sequence[dict]], key: str, path: str, *, title: str,
                ylabel: str, smoothing: int = 1, log_y: bool = False) -> Optional[str]:
  """One line per run of metric `key` against step; returns the path, or None if no data."""
  fig, ax = plt.subplots(figsize=(8, 5))
  drawn = 0
  for name, rows in runs.items():
    steps, values = series(rows, key)
    if len(steps):
      ax.plot(steps, smooth(values, smoothing), label=name, linewidth=1.3)
      drawn += 1
  if not drawn:
    plt.close(fig)
    return None
  ax.set(title=title, xlabel='step', ylabel=ylabel)
  if log_y:
    ax.set_yscale('log')
  return _save_with_legend(fig, ax, path)


def seed_mean_std(seeds: Sequence[Sequence[dict]], key: str, smoothing: int = 1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """(steps every seed logged, mean, sample std over seeds, number of seeds) of `key`."""
  curves = [series(rows, key) for rows in seeds]
  curves = [(steps, smooth(values, smoothing)) for steps, values in curves if len(steps)]
  if not curves:
    return np.zeros(0), np.zeros(0), np.zeros(0), 0
  common = np.asarray(sorted(set.intersection(*(set(steps.tolist()) for steps, _ in curves))))
  if not len(common):
    return common, np.zeros(0), np.zeros(0), len(curves)
  stacked = np.stack([values[np.searchsorted(steps, common)] for steps, values in curves])
  std = stacked.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
  return common, stacked.mean(0), std, len(curves)


def plot_seed_bands(runs: Mapping[str, Sequence[Sequence[dict]]], key: str, path: str, *,
                    title: str, ylabel: str, smoothing: int = 1) -> Optional[str]:
  """Per run name, the mean over its seeds of metric `key` with a band of ±1 std.

  Seeds are aligned on the steps they all logged; a name with one seed is a plain line.
  """
  fig, ax = plt.subplots(figsize=(8, 5))
  drawn = 0
  for name, seeds in runs.items():
    steps, mean, std, count = seed_mean_std(seeds, key, smoothing)
    if not len(steps):
      continue
    (line,) = ax.plot(steps, mean, label=f'{name} (n={count})', linewidth=1.3)
    if count > 1:
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    drawn += 1
  if not drawn:
    plt.close(fig)
    return None
  ax.set(title=title, xlabel='step', ylabel=ylabel)
  return _save_with_legend(fig, ax, path)


def plot_train_val_panels(runs: Mapping[str, Sequence[Sequence[dict]]], path: str
                          ) -> Optional[str]:
  """One panel per run name: training and validation loss (mean over seeds, ±1 std band).

  Both are the evaluation's plain cross-entropy (no dropout, no smoothing), the training one
  on as many training pairs as the validation split has: the space between the curves is
  the generalization gap a regularizer should close.
  """
  named = {name: seeds for name, seeds in runs.items() if seeds}
  if not named:
    return None
  columns = min(4, len(named))
  rows = -(-len(named) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), sharex=True,
                           sharey=True, squeeze=False)
  for ax, (name, seeds) in zip(axes.flat, named.items()):
    for key, label in (('eval/train_loss', 'train'), ('eval/loss', 'validation')):
      steps, mean, std, count = seed_mean_std(seeds, key)
      if len(steps):
        (line,) = ax.plot(steps, mean, label=label, linewidth=1.2)
        if count > 1:
          ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(named):]:
    ax.set_visible(False)
  axes.flat[0].legend(fontsize=8)
  fig.supxlabel('step')
  fig.supylabel('cross-entropy')
  return _save(fig, path, dpi=110)


def plot_lr_sensitivity(points: Mapping[str, Sequence[tuple[float, float, str]]], path: str,
                        *, title: str, ylabel: str) -> Optional[str]:
  """A measure against peak learning rate, one line per variant (log x).

  `points[name]` holds (learning rate, value, status), status one of 'trained', 'ignores the
  source' (drawn on the line, circled: its value is real but it translates nothing) and
  'diverged' (an x at the top of the axes: it has no value to plot).
  """
  if not any(points.values()):
    return None
  finite = [value for pts in points.values() for _, value, status in pts
            if status != 'diverged']
  top = max(finite) * 1.05 if finite else 1.0
  fig, ax = plt.subplots(figsize=(8, 5))
  for name, pts in points.items():
    pts = sorted(pts)
    kept = [(lr, value, status) for lr, value, status in pts if status != 'diverged']
    (line,) = ax.plot([lr for lr, _, _ in kept], [value for _, value, _ in kept], marker='o',
                      label=name)
    ignoring = [(lr, value) for lr, value, status in kept if status == 'ignores the source']
    if ignoring:
      ax.plot(*zip(*ignoring), linestyle='none', marker='o', markersize=14,
              markerfacecolor='none', color=line.get_color())
    diverged = [lr for lr, _, status in pts if status == 'diverged']
    if diverged:
      ax.plot(diverged, [top] * len(diverged), linestyle='none', marker='x', markersize=10,
              color=line.get_color())
  ax.set_xscale('log')
  ax.set(title=title + ' (circled: ignores the source, x: diverged)',
         xlabel='peak learning rate', ylabel=ylabel)
  return _save_with_legend(fig, ax, path)


def plot_memory_by_length(lengths: Sequence[int], sizes: Mapping[str, Sequence[int]],
                          path: str, *, title: str) -> str:
  """Bytes (drawn in MiB) of each named array against the text's length, log-log."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (name, values), marker in zip(sizes.items(), 'os^v'):
    ax.plot(lengths, np.asarray(values) / 2**20, marker=marker, label=name)
  ax.set(xscale='log', yscale='log', xlabel='tokens (source = output)', ylabel='MiB',
         title=title)
  ax.set_xticks(list(lengths), [str(n) for n in lengths])
  return _save_with_legend(fig, ax, path)


def plot_training_run(out_dir: str, name: str, rows: Sequence[dict]) -> list[str]:
  """Loss, validation and learning-rate curves of one run (labelled `name`) into out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  run = {name: rows}
  made = [
      plot_curves(run, 'train/loss', os.path.join(out_dir, 'train_loss.png'),
                  title='Training loss (moving average of 20 steps)', ylabel='cross-entropy',
                  smoothing=20),
      plot_curves(run, 'eval/loss', os.path.join(out_dir, 'eval_loss.png'),
                  title='Validation loss', ylabel='cross-entropy'),
      plot_curves(run, 'eval/bleu', os.path.join(out_dir, 'eval_bleu.png'),
                  title='Validation BLEU (greedy)', ylabel='BLEU'),
      plot_curves(run, 'train/learning_rate', os.path.join(out_dir, 'learning_rate.png'),
                  title='Learning rate', ylabel='rate'),
  ]
  return [p for p in made if p]


def plot_panels_over_steps(runs: Mapping[str, Sequence[dict]],
                           panels: Sequence[tuple[str, str]], path: str, *, title: str
                           ) -> Optional[str]:
  """One panel per (metric key, y label) of `panels`, side by side over a shared step axis,
  one line per run: e.g. the pilot's validation BLEU and loss."""
  if not any(len(series(rows, key)[0]) for rows in runs.values() for key, _ in panels):
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), sharex=True,
                           squeeze=False)
  for ax, (key, ylabel) in zip(axes.flat, panels):
    for name, rows in runs.items():
      steps, values = series(rows, key)
      if len(steps):
        ax.plot(steps, values, marker='.', label=name, linewidth=1.3)
    ax.set(xlabel='step', ylabel=ylabel)
    ax.grid(alpha=0.3)
  axes.flat[0].legend(fontsize=8)
  fig.suptitle(title)
  return _save(fig, path, dpi=120)


def _positive(values) -> np.ndarray:
  """Values with zeros as NaN: a log axis has no place for 0 (ReZero's branches at init)."""
  values = np.asarray(values, dtype=float)
  return np.where(values > 0, values, np.nan)


def plot_grad_norms_over_training(
    runs: Mapping[str, Mapping[str, Mapping[int, tuple[np.ndarray, np.ndarray]]]], path: str
) -> Optional[str]:
  """Per-layer gradient norms against step (Xiong et al. 2020, Fig. 3): a row of panels per
  run, encoder left and decoder right, a line per layer (darker is deeper), both axes log and
  shared, so a norm that grows with depth in one variant and not another reads at a glance.

  `runs[name][stack][layer]` is (steps, norms), as run_records.layer_grad_norms gives it.
  """
  runs = {name: stacks for name, stacks in runs.items() if stacks}
  if not runs:
    return None
  stacks = ('encoder', 'decoder')
  fig, axes = plt.subplots(len(runs), 2, figsize=(10, 2.6 * len(runs) + 0.6), sharex=True,
                           sharey=True, squeeze=False)
  for row, (name, by_stack) in zip(axes, runs.items()):
    for ax, stack in zip(row, stacks):
      layers = by_stack.get(stack, {})
      for index, (steps, norms) in layers.items():
        shade = plt.cm.viridis(0.85 - 0.75 * index / max(len(layers) - 1, 1))
        ax.plot(steps, _positive(norms), color=shade, label=f'layer {index}', linewidth=1.2)
      ax.set_xscale('log')
      ax.set_yscale('log')
      ax.set_title(f'{name}: {stack}', fontsize=9)
      ax.grid(alpha=0.3, which='both')
      if layers:
        ax.legend(fontsize=7)
  fig.supxlabel('step')
  fig.supylabel('gradient L2 norm of the layer')
  return _save(fig, path, dpi=110)


def plot_grad_norms_by_layer(norms: Mapping[str, Mapping[str, Sequence[float]]], path: str,
                             *, title: str) -> Optional[str]:
  """Gradient norm against layer index, a line per run (Xiong et al. 2020, Fig. 3's layout):
  `norms[name][stack]` lists layer 0, 1, ... of 'encoder' and 'decoder', a panel each."""
  norms = {name: stacks for name, stacks in norms.items() if any(stacks.values())}
  if not norms:
    return None
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
  for ax, stack in zip(axes, ('encoder', 'decoder')):
    for name, stacks in norms.items():
      values = stacks.get(stack, [])
      if len(values):
        ax.plot(np.arange(len(values)), _positive(values), marker='o', label=name)
    ax.set(title=stack, xlabel='layer', yscale='log')
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which='both')
  axes[0].set_ylabel('gradient L2 norm of the layer')
  axes[0].legend(fontsize=8)
  fig.suptitle(title)
  return _save(fig, path, dpi=120)


def plot_attention(weights: np.ndarray, x_tokens: Sequence[str], y_tokens: Sequence[str],
                   path: str, *, title: str) -> str:
  """A heatmap of attention weights [queries, keys] with the tokens on the axes.

  The colour scale is fixed to [0, 1], so maps of different heads can be compared by eye.
  """
  weights = np.asarray(weights)
  if weights.shape != (len(y_tokens), len(x_tokens)):
    raise ValueError(f'weights {weights.shape} do not match {len(y_tokens)} query and '
                     f'{len(x_tokens)} key tokens.')
  fig, ax = plt.subplots(figsize=(0.35 * len(x_tokens) + 3, 0.35 * len(y_tokens) + 2))
  image = ax.imshow(weights, cmap='viridis', vmin=0.0, vmax=1.0, aspect='auto')
  fig.colorbar(image, ax=ax, fraction=0.04)
  ax.set_xticks(range(len(x_tokens)))
  ax.set_xticklabels(x_tokens, rotation=90, fontsize=7)
  ax.set_yticks(range(len(y_tokens)))
  ax.set_yticklabels(y_tokens, fontsize=7)
  ax.set_title(title, fontsize=8)
  ax.set(xlabel='attended (keys)', ylabel='attending (queries)')
  return _save(fig, path, dpi=110)
