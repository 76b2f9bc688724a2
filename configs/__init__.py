"""Experiment configs: `base.py` holds every field; each variant overrides a few.

`python -m configs` prints each variant's differences from the base config, at both scales.
"""

import glob
import os
from typing import Any

import ml_collections

_MISSING = object()


def variant_names() -> list[str]:
  """Every variant file in this folder, sorted (base.py and private modules excluded)."""
  folder = os.path.dirname(os.path.abspath(__file__))
  names = [os.path.splitext(os.path.basename(p))[0] for p in glob.glob(f'{folder}/*.py')]
  return sorted(n for n in names if not n.startswith('_') and n != 'base')


def config_diff(variant: ml_collections.ConfigDict,
                base: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """{'dotted.field': (base value, variant value)} for every field that differs or is new."""
  flat_base, flat_variant = _flatten(base.to_dict()), _flatten(variant.to_dict())
  return {key: (flat_base.get(key), flat_variant.get(key))
          for key in sorted(flat_base.keys() | flat_variant.keys())
          if flat_base.get(key, _MISSING) != flat_variant.get(key, _MISSING)}


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat
