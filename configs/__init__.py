"""Experiment configs: `base.py` holds every field; each variant overrides a few.

`python -m configs` prints each variant's differences from the base config, at both scales.
"""

import glob
import importlib
import os
from typing import Any

import ml_collections

from transformer import cli
from transformer import config_utils

_MISSING = object()


def variant_names() -> list[str]:
  """Every variant file in this folder, sorted (base.py and private modules excluded)."""
  folder = os.path.dirname(os.path.abspath(__file__))
  names = [os.path.splitext(os.path.basename(p))[0] for p in glob.glob(f'{folder}/*.py')]
  return sorted(n for n in names if not n.startswith('_') and n != 'base')


def get_variant(name: str, scale: str) -> ml_collections.ConfigDict:
  """The config of `configs/<name>.py` at `scale`; an unknown name is a ValueError naming them."""
  if name not in variant_names():
    raise cli.UserError(f'Unknown variant {name!r}; configs/ has: {", ".join(variant_names())}.')
  return importlib.import_module(f'configs.{name}').get_config(scale)


def config_diff(variant: ml_collections.ConfigDict,
                base: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """{'dotted.field': (base value, variant value)} for every field that differs or is new."""
  flat_base = config_utils.flatten(base.to_dict())
  flat_variant = config_utils.flatten(variant.to_dict())
  return {key: (flat_base.get(key), flat_variant.get(key))
          for key in sorted(flat_base.keys() | flat_variant.keys())
          if flat_base.get(key, _MISSING) != flat_variant.get(key, _MISSING)}
