"""Plots: the numbers behind the curves, and that each figure is a real PNG."""

import numpy as np

from transformer import plots

PNG = b'\x89PNG\r\n\x1a\n'


def rows(values, key='eval/loss', every=10):
  return [{'step': every * (i + 1), key: v} for i, v in enumerate(values)]


def test_series_and_smoothing():
  steps, values = plots.series(rows([3.0, 2.0, 1.0]) + [{'step': 40, 'other': 1.0}], 'eval/loss')
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_allclose(plots.smooth(values, 2), [3.0, 2.5, 1.5])


def test_seed_mean_std_aligns_seeds_on_common_steps():
  """Seed 2 stopped early: only the steps all three logged are averaged."""
  seeds = [rows([4.0, 3.0, 2.0]), rows([2.0, 1.0, 0.0]), rows([3.0, 2.0])]
  steps, mean, std, count = plots.seed_mean_std(seeds, 'eval/loss')
  np.testing.assert_array_equal(steps, [10, 20])
  np.testing.assert_allclose(mean, [3.0, 2.0])
  np.testing.assert_allclose(std, [1.0, 1.0])  # Sample std (ddof=1) of (4, 2, 3).
  assert count == 3


def test_figures_are_pngs(tmp_path):
  seeds = {'a': [rows([4.0, 3.0]), rows([3.0, 2.5])], 'b': [rows([5.0, 4.0])]}
  paths = [
      plots.plot_seed_bands(seeds, 'eval/loss', str(tmp_path / 'bands.png'), title='t',
                            ylabel='y'),
      plots.plot_lr_sensitivity({'post': [(1e-3, 4.0, 'trained'),
                                          (4e-3, 0.2, 'ignores the source'),
                                          (8e-3, 0.0, 'diverged')],
                                 'pre': [(1e-3, 3.9, 'trained'), (8e-3, 4.1, 'trained')]},
                                str(tmp_path / 'lr.png'), title='t', ylabel='BLEU'),
      plots.plot_curves({'a': rows([1.0, 2.0])}, 'eval/loss', str(tmp_path / 'c.png'),
                        title='t', ylabel='y'),
      plots.plot_attention(np.eye(3), ['a', 'b', 'c'], ['x', 'y', 'z'],
                           str(tmp_path / 'att.png'), title='t'),
  ]
  for path in paths:
    with open(path, 'rb') as f:
      assert f.read(8) == PNG
  assert plots.plot_curves({'a': rows([1.0])}, 'missing', str(tmp_path / 'n.png'), title='t',
                           ylabel='y') is None
