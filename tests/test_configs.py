"""Each variant file changes exactly the fields it names, at both scales."""

import ast
import importlib
import pathlib

import pytest

from transformer import variants

from configs import base

VARIANTS = variants.variant_names()
STUDY = ('baseline', 'pre_ln', 'rms_norm', 'batch_norm', 'deep_norm', 'rezero', 'no_dropout',
         'strong_dropout', 'label_smoothing', 'r_drop')


def assigned_fields(name: str) -> set[str]:
  """Dotted fields the file assigns (`config.a.b = ...`), read from its source, not run."""
  tree = ast.parse(pathlib.Path(base.__file__).with_name(f'{name}.py').read_text())
  fields = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign):
      for target in node.targets:
        parts = []
        while isinstance(target, ast.Attribute):
          parts.append(target.attr)
          target = target.value
        if parts and isinstance(target, ast.Name) and target.id == 'config':
          fields.add('.'.join(reversed(parts)))
  return fields


def test_the_ten_study_variants_exist():
  assert set(STUDY) <= set(VARIANTS)


@pytest.mark.parametrize('scale', ['full', 'small'])
@pytest.mark.parametrize('name', VARIANTS)
def test_variant_changes_only_what_it_names(name, scale):
  variant = importlib.import_module(f'configs.{name}').get_config(scale)
  diff = variants.config_diff(variant, base.get_config(scale))
  named = assigned_fields(name)
  assert set(diff) <= named  # Nothing changed behind the reader's back...
  assert {field for field in named if field in diff} == named  # ...and no no-op assignment.
  assert (name == 'baseline') == (not diff)


def test_expected_differences():
  def diff(name):
    return variants.config_diff(importlib.import_module(f'configs.{name}').get_config(), base.get_config())
  assert diff('pre_ln') == {'model.norm_position': ('post', 'pre')}
  assert diff('no_dropout') == {'model.dropout_rate': (0.1, 0.0)}
  assert diff('label_smoothing') == {'label_smoothing': (0.0, 0.1)}
  assert diff('r_drop') == {'r_drop_alpha': (0.0, 5.0)}
  assert diff('strong_dropout') == {'model.dropout_rate': (0.1, 0.3)}  # One stated change.


def test_table_lists_every_difference():
  table = variants.variant_table('full')
  print(table)  # pytest -s shows it; the README carries a copy.
  assert '| rezero | `model.residual` | identity | rezero |' in table
  assert table.count('\n') == 1 + sum(
      max(1, len(variants.config_diff(importlib.import_module(f'configs.{n}').get_config(),
                                     base.get_config()))) for n in VARIANTS)
