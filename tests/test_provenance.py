"""The code version recorded with each study run."""

import subprocess

from transformer import provenance


def test_code_version_is_this_checkouts_commit():
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=provenance.REPOSITORY,
                        capture_output=True, text=True, check=True).stdout.strip()
  version = provenance.code_version()
  assert version in (head, head + '+dirty')


def test_outside_a_checkout_the_version_is_unknown(monkeypatch, tmp_path):
  monkeypatch.setattr(provenance, 'REPOSITORY', str(tmp_path))
  assert provenance.code_version() == 'unknown'
