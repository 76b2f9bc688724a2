"""The experiment variants of configs/: listing, loading and how each differs from base.

configs/ is plain data (each file returns an ml_collections.ConfigDict and imports nothing
from this package); everything that works on those configs lives here.
`python -m transformer.variants [--scale=small]` prints each variant's differences from
base.py as a Markdown table.
"""

import argparse
import importlib
import pkgutil
from typing import Any

import ml_collections

import configs
from configs import base
from transformer import cli
from transformer import config_utils

_MISSING = object()
SCALES = base.SCALES


def variant_names() -> list[str]:
  """Every variant module of configs/, sorted (base and private modules excluded)."""
  names = [module.name for module in pkgutil.iter_modules(configs.__path__)]
  return sorted(n for n in names if not n.startswith('_') and n != 'base')


def get_variant(name: str, scale: str) -> ml_collections.ConfigDict:
  """The config of `configs/<name>.py` at `scale`; an unknown name is an error naming them."""
  if name not in variant_names():
    raise cli.UserError(f'Unknown variant {name!r}; configs/ has: {", ".join(variant_names())}.')
  if scale not in SCALES:
    raise cli.UserError(f'Unknown scale {scale!r}; expected one of {", ".join(SCALES)}.')
  return importlib.import_module(f'configs.{name}').get_config(scale)


def config_diff(variant: ml_collections.ConfigDict,
                reference: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """{'dotted.field': (reference value, variant value)} for every field that differs or is new."""
  flat_reference = config_utils.flatten(reference.to_dict())
  flat_variant = config_utils.flatten(variant.to_dict())
  return {key: (flat_reference.get(key), flat_variant.get(key))
          for key in sorted(flat_reference.keys() | flat_variant.keys())
          if flat_reference.get(key, _MISSING) != flat_variant.get(key, _MISSING)}


def variant_table(scale: str) -> str:
  """A Markdown table: variant | field | base value | variant value."""
  reference = base.get_config(scale)
  rows = ['| variant | field | base | variant |', '|---|---|---|---|']
  for name in variant_names():
    diff = config_diff(get_variant(name, scale), reference)
    if not diff:
      rows.append(f'| {name} | (none: the reference) | | |')
    for field, (old, new) in diff.items():
      rows.append(f'| {name} | `{field}` | {old} | {new} |')
  return '\n'.join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--scale', default='full', choices=SCALES)
  print(variant_table(parser.parse_args().scale))


if __name__ == '__main__':
  main()
