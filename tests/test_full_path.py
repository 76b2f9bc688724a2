"""The full-scale path on a CPU: Transformer-base on an IWSLT release, trained and decoded.

Everything is the full config (configs/base.py 'full': Transformer-base, the rsqrt schedule
and its warm-up, token batches with accumulation, the 'auto' dtype rule, checkpoint
averaging) except what a 2-core CI machine cannot hold: the batch is cut to 2 micro-batches
of 2 rows, the run to 2 steps, and the vocabulary to 5,000 pieces, because the release built
from the shipped tst2016 files (1,159 pairs) cannot make sentencepiece's 16,000 (it allows at
most ~5,900 there). Exact resume, with accumulation, is checked at tiny size in
test_training: a resume here loads this model's compiled step again, which took 96 s from
the persistent cache on the 2-core machine under load.
"""

import math
import os

import pytest

import conftest
from configs import base
from transformer import config_utils
from transformer import inference
from transformer import datasets
from transformer import training
from transformer import workdir as workdir_lib


@pytest.fixture(scope='module')
def iwslt_release(tmp_path_factory):
  """A data_dir and manual_dir with fr-en.tgz in the official layout, built once."""
  root = tmp_path_factory.mktemp('iwslt')
  conftest.write_archive(root / 'manual', 'tgz', conftest.archive_files())
  return os.fspath(root / 'tfds'), os.fspath(root / 'manual')


def test_full_config_trains_and_decodes_an_average(iwslt_release, tmp_path):
  """float32 here by the 'auto' rule; bfloat16 is checked at tiny size in test_full_scale."""
  data_dir, manual_dir = iwslt_release
  config = base.get_config('full')
  config_utils.apply_overrides(config, {
      'data_dir': data_dir, 'manual_dir': manual_dir, 'vocab_size': 5_000,
      'grad_accum_steps': 2, 'batch_tokens': 2 * 2 * config.max_target_length,
      'num_train_steps': 2, 'checkpoint_every_steps': 1, 'eval_every_steps': 0,
      'diagnostics_every_steps': 0, 'log_every_steps': 1, 'average_checkpoints': 2,
      'model.dtype': 'auto'})
  assert (config.model.num_layers, config.model.emb_dim, config.model.mlp_dim) == (6, 512, 2048)
  workdir = os.fspath(tmp_path / 'run')
  training.train_and_evaluate(config, workdir)
  run = workdir_lib.Workdir(workdir)
  assert run.saved_steps() == [1, 2]
  rows = run.metrics()
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2]
  assert all(math.isfinite(r['train/loss']) for r in rows if 'train/loss' in r)

  # The five shortest: one length bucket, so beam search compiles once at this size.
  pairs = sorted(datasets.load_pairs(run.config(), 'test'),
                 key=lambda pair: len(pair[0]))[:5]
  source, reference = tmp_path / 'test.fr', tmp_path / 'test.en'
  source.write_text(''.join(fr + '\n' for fr, _ in pairs), encoding='utf-8')
  reference.write_text(''.join(en + '\n' for _, en in pairs), encoding='utf-8')
  result = inference.decode(workdir, checkpoint='average:2', input_path=os.fspath(source),
                            output_path=os.fspath(tmp_path / 'out.en'),
                            reference_paths=[os.fspath(reference)], beam_size=4)
  assert result['step'] == 2 and result['beam_size'] == 4 and result['sentences'] == 5
  assert math.isfinite(result['bleu']) and 'nrefs:1' in result['bleu_signature']
