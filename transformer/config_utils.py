"""Small helpers over nested configs: flatten to dotted keys, JSON, dotted overrides."""

import json
from typing import Any, Mapping

import ml_collections


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'model': {'norm': 'x'}} -> {'model.norm': 'x'}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """A plain JSON-able dict (field references resolved)."""
  return json.loads(config.to_json_best_effort())


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted fields ('model.norm': 'rms_norm'); an unknown field is a KeyError."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      if parent not in node or not isinstance(node[parent], ml_collections.ConfigDict):
        raise KeyError(f'Unknown config field {key!r}.')
      node = node[parent]
    if leaf not in node:
      raise KeyError(f'Unknown config field {key!r}.')
    node[leaf] = value
