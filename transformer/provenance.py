"""Which code a run was trained with: a hash of the training code, and the git commit.

The study records `code_version()` in every run's result file, and the report refuses to put
runs of different versions in one table: a fix to the step between two runs would otherwise
pass for a difference between variants. The version is a hash of the files that decide what
is trained and how it is scored (TRAINING_CODE) and of the libraries' versions, not the
commit: a study carried over several sittings keeps its runs through commits that touch only
the report, the README or the tests, and a change to the step or the data, committed or not,
is caught.
"""

import glob
import hashlib
from importlib import metadata
import os
import subprocess

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What trains a run and scores it: configs, data, model, step, loop, search. Every other file
# of transformer/ reads what runs wrote or schedules them, and changes no number a run
# computes (REPORTING_CODE); tests/test_provenance.py checks that each module is in one of
# the two.
TRAINING_CODE = (
    'configs/*.py', 'transformer/datasets/*.py', 'transformer/datasets/data/*',
    'transformer/checkpoints.py', 'transformer/config_utils.py', 'transformer/inference.py',
    'transformer/input_pipeline.py', 'transformer/losses.py', 'transformer/metrics.py',
    'transformer/models.py',
    'transformer/norms.py', 'transformer/optim.py', 'transformer/search.py',
    'transformer/sharding.py', 'transformer/steps.py', 'transformer/tokenizer.py',
    'transformer/training.py', 'transformer/translator.py', 'transformer/variants.py',
    'transformer/workdir.py',
)
REPORTING_CODE = (
    'transformer/__init__.py', 'transformer/attention_maps.py', 'transformer/claims.py',
    'transformer/cli.py', 'transformer/config_checks.py', 'transformer/flops.py',
    'transformer/learner.py', 'transformer/learner_report.py',
    'transformer/output_stats.py', 'transformer/plots.py', 'transformer/processes.py',
    'transformer/provenance.py',
    'transformer/report.py', 'transformer/report_grid.py', 'transformer/report_regime.py',
    'transformer/report_tables.py', 'transformer/run_records.py',
    'transformer/significance.py', 'transformer/study.py', 'transformer/study_plan.py',
    'transformer/verb_object.py',
)
LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'sentencepiece',
             'sacrebleu', 'numpy')


def training_files() -> list[str]:
  """The files of TRAINING_CODE, relative to the repository, sorted."""
  found = {os.path.relpath(path, REPOSITORY) for pattern in TRAINING_CODE
           for path in glob.glob(os.path.join(REPOSITORY, pattern))}
  return sorted(path for path in found if os.path.isfile(os.path.join(REPOSITORY, path)))


def _library_versions() -> dict[str, str]:
  versions = {}
  for name in LIBRARIES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = 'absent'
  return versions


def code_version() -> str:
  """'code-<16 hex>': SHA-256 of TRAINING_CODE's paths and bytes and of the library versions."""
  digest = hashlib.sha256()
  for path in training_files():
    digest.update(path.encode() + b'\0')
    with open(os.path.join(REPOSITORY, path), 'rb') as f:
      digest.update(f.read() + b'\0')
  for name, version in _library_versions().items():
    digest.update(f'{name}=={version}\0'.encode())
  return 'code-' + digest.hexdigest()[:16]


def git_commit() -> str:
  """The checkout's commit ('<sha>+dirty' with uncommitted changes to tracked Python files),
  or 'unknown' outside a git checkout; recorded beside code_version() for the reader."""
  def git(*args: str) -> str | None:
    try:
      return subprocess.run(['git', *args], cwd=REPOSITORY, capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return None
  commit = git('rev-parse', 'HEAD')
  if not commit:
    return 'unknown'
  changed = git('status', '--porcelain', '--untracked-files=no', '--', '*.py')
  return commit + ('+dirty' if changed else '')
