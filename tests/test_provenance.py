"""The code version recorded with each study run."""

import glob
import os
import shutil
import subprocess
import sys

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


def _git(cwd, *args):
  return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=cwd,
                        check=True, capture_output=True, text=True).stdout.strip()


def test_study_checkout_trains_on_the_runs_code_only(tmp_path):
  """scripts/study_checkout.sh: a worktree at a commit whose code version a finished run
  recorded, sharing the experiment folder; a commit of other training code is refused."""
  if not os.path.isdir(os.path.join(provenance.REPOSITORY, '.git')) and not os.path.isfile(
      os.path.join(provenance.REPOSITORY, '.git')):
    pytest.skip('not a git checkout')
  clone = tmp_path / 'clone'
  subprocess.run(['git', 'clone', '--quiet', '--no-checkout', provenance.REPOSITORY, str(clone)],
                 check=True)
  _git(clone, 'checkout', '--quiet', 'HEAD')
  # This checkout's training code, committed over the clone's (tests may run on edits).
  for pattern in ('configs', 'transformer', 'scripts'):
    shutil.rmtree(clone / pattern)
    shutil.copytree(os.path.join(provenance.REPOSITORY, pattern), clone / pattern,
                    ignore=shutil.ignore_patterns('__pycache__'))
  run = clone / 'results' / 'study' / 'baseline' / 'seed_0'
  run.mkdir(parents=True)
  (run / 'test_result.json').write_text(f'{{"code_version": "{provenance.code_version()}"}}')
  _git(clone, 'add', '-A')
  _git(clone, 'commit', '--quiet', '-m', 'the study code')
  study_commit = _git(clone, 'rev-parse', 'HEAD')
  with open(clone / 'transformer' / 'losses.py', 'a', encoding='utf-8') as f:
    f.write('\n# A change to the training code.\n')
  _git(clone, 'commit', '--quiet', '-am', 'the training code moves on')

  def checkout(commit, tree):
    return subprocess.run(['bash', 'scripts/study_checkout.sh', commit, 'results/study',
                           str(tmp_path / tree)], cwd=clone, capture_output=True, text=True,
                          check=False, env={**os.environ, 'PATH': os.pathsep.join(
                              [os.path.dirname(sys.executable), os.environ['PATH']])})

  moved_on = checkout('HEAD', 'other')
  assert moved_on.returncode == 1, moved_on.stderr
  assert 'differ' in moved_on.stderr
  made = checkout(study_commit, 'study-code')
  assert made.returncode == 0, made.stderr
  assert f'on {provenance.code_version()}, the code of 1 of its finished runs' in made.stdout
  shared = tmp_path / 'study-code' / 'results' / 'study'
  assert shared.is_symlink() and shared.resolve() == (clone / 'results' / 'study').resolve()
  # Its training code is the study commit's, not the newer one's.
  assert (tmp_path / 'study-code' / 'transformer' / 'losses.py').read_text() != (
      clone / 'transformer' / 'losses.py').read_text()
