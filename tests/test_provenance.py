"""The code version recorded with each study run."""

import glob
import os
import shutil
import subprocess

import pytest

from transformer import provenance


def test_every_module_is_training_or_reporting_code():
  training = set(provenance.training_files())
  for path in glob.glob(os.path.join(provenance.REPOSITORY, 'transformer', '*.py')):
    relative = os.path.relpath(path, provenance.REPOSITORY)
    assert (relative in training) != (relative in provenance.REPORTING_CODE), relative


@pytest.fixture
def copy_of_repository(tmp_path, monkeypatch):
  for folder in ('configs', 'transformer'):
    shutil.copytree(os.path.join(provenance.REPOSITORY, folder), tmp_path / folder,
                    ignore=shutil.ignore_patterns('__pycache__'))
  monkeypatch.setattr(provenance, 'REPOSITORY', str(tmp_path))
  return tmp_path


def test_the_version_changes_with_training_code_only(copy_of_repository):
  before = provenance.code_version()
  assert before.startswith('code-') and len(before) == len('code-') + 16
  with open(copy_of_repository / 'transformer' / 'report.py', 'a') as f:
    f.write('# a reporting change\n')
  assert provenance.code_version() == before
  with open(copy_of_repository / 'transformer' / 'steps.py', 'a') as f:
    f.write('# a training change\n')
  changed = provenance.code_version()
  assert changed != before
  with open(copy_of_repository / 'configs' / 'baseline.py', 'a') as f:
    f.write('# a config change\n')
  assert provenance.code_version() not in (before, changed)


def test_the_version_names_library_versions(copy_of_repository, monkeypatch):
  before = provenance.code_version()
  monkeypatch.setattr(provenance, '_library_versions', lambda: {'jax': '0.0.1'})
  assert provenance.code_version() != before


def test_git_commit_is_this_checkouts_commit():
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=provenance.REPOSITORY,
                        capture_output=True, text=True, check=True).stdout.strip()
  assert provenance.git_commit() in (head, head + '+dirty')


def test_outside_a_checkout_the_commit_is_unknown(monkeypatch, tmp_path):
  monkeypatch.setattr(provenance, 'REPOSITORY', str(tmp_path))
  assert provenance.git_commit() == 'unknown'
