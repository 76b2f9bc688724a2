"""Prints every variant's differences from base.py: `python -m configs [--scale=small]`."""

import argparse
import importlib

import configs
from configs import base


def variant_table(scale: str) -> str:
  """A Markdown table: variant | field | base value | variant value."""
  reference = base.get_config(scale)
  rows = ['| variant | field | base | variant |', '|---|---|---|---|']
  for name in configs.variant_names():
    variant = importlib.import_module(f'configs.{name}').get_config(scale)
    diff = configs.config_diff(variant, reference)
    if not diff:
      rows.append(f'| {name} | (none: the reference) | | |')
    for field, (old, new) in diff.items():
      rows.append(f'| {name} | `{field}` | {old} | {new} |')
  return '\n'.join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--scale', default='full', choices=('full', 'small'))
  print(variant_table(parser.parse_args().scale))


if __name__ == '__main__':
  main()
