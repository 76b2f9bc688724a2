"""Which code a run was trained with: the git commit of this checkout.

The study records it in every run's result file, and the report refuses to put runs of
different code versions in one table: a fix to the step between two runs would otherwise
pass for a difference between variants.
"""

import os
import subprocess

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(['git', *args], cwd=REPOSITORY, capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def code_version() -> str:
  """'<commit>' of the checkout, '<commit>+dirty' with uncommitted changes to tracked
  Python files, or 'unknown' outside a git checkout."""
  commit = _git('rev-parse', 'HEAD')
  if not commit:
    return 'unknown'
  changed = _git('status', '--porcelain', '--untracked-files=no', '--', '*.py')
  return commit + ('+dirty' if changed else '')
