"""What `pip install .` installs: the package, its data and the configs it trains with."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def test_the_install_holds_configs_and_works_outside_the_checkout(tmp_path):
  """setup.py's build (what a non-editable install copies) has configs/ as a package, so the
  variants load from another folder with nothing of the checkout on the path."""
  build = tmp_path / 'build'
  subprocess.run([sys.executable, 'setup.py', '-q', 'build', f'--build-base={build}'],
                 cwd=ROOT, check=True, capture_output=True)
  lib = build / 'lib'
  installed = {str(p.relative_to(lib)) for p in lib.rglob('*') if p.is_file()}
  for name in ('configs/__init__.py', 'configs/base.py', 'configs/baseline.py',
               'transformer/workdir.py', 'transformer/variants.py',
               'transformer/datasets/data/bible_fr_en.tsv.xz'):
    assert name in installed, name
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  table = subprocess.run([sys.executable, '-m', 'transformer.variants', '--scale=small'],
                         cwd=elsewhere, check=True, capture_output=True, text=True,
                         env={**os.environ, 'PYTHONPATH': str(lib), 'PYTHONNOUSERSITE': '1'})
  assert '| pre_ln | `model.norm_position` | post | pre |' in table.stdout
