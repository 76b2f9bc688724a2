"""The study: train every variant in configs/, decode each on the test split, write a report.

Each run lives in `<experiment_dir>/<variant>/seed_<n>/`; an unfinished run resumes and a
finished one is skipped, so the study can be re-run after any interruption. Two extra runs
form the warm-up ablation (post-LN and pre-LN with no warm-up). The report,
`<experiment_dir>/REPORT.md`, and its plots are computed from the runs' metrics.jsonl and
test_result.json files only. The entry point is the top-level study.py.
"""

import json
import os
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import ml_collections

import configs
from transformer import checkpoints
from transformer import config_utils
from transformer import inference
from transformer import input_pipeline
from transformer import report
from transformer import training

STUDY_VARIANTS = ('baseline', 'pre_ln', 'rms_norm', 'batch_norm', 'deep_norm', 'rezero',
                  'no_dropout', 'strong_dropout', 'label_smoothing', 'r_drop')
# The warm-up ablation (Xiong et al. 2020): without warm-up, post-LN is expected to fail
# where pre-LN trains. The difference shows early, so these runs are shorter.
ABLATIONS = {
    'ablation_post_ln_no_warmup': ('baseline', {'warmup_steps': 0}),
    'ablation_pre_ln_no_warmup': ('pre_ln', {'warmup_steps': 0}),
}
ABLATION_STEPS_FRACTION = 0.5
RESULT_FILE = 'test_result.json'


def variant_names() -> list[str]:
  """Every variant file in configs/ (the study's ten first, then any extras)."""
  found = configs.variant_names()
  return ([n for n in STUDY_VARIANTS if n in found] +
          [n for n in found if n not in STUDY_VARIANTS])


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) one run, then decodes its best checkpoint on the test split."""
  result_path = os.path.join(workdir, RESULT_FILE)
  if os.path.exists(result_path):
    with open(result_path) as f:
      result = json.load(f)
    if result.get('num_train_steps') == config.num_train_steps:
      logging.info('%s is done; skipping.', workdir)
      return result
  result = {'num_train_steps': config.num_train_steps}
  started = time.perf_counter()
  try:
    training.train_and_evaluate(config, workdir)
    result['diverged'] = False
  except training.NonFiniteLossError as e:
    logging.warning('%s diverged: %s', workdir, e)
    result['diverged'] = True
    result['error'] = str(e)
  result['train_seconds_this_invocation'] = time.perf_counter() - started
  if not result['diverged']:
    decoded = inference.decode(workdir, checkpoint='best', split='test',
                               output_path=os.path.join(workdir, 'test_hypotheses.en'))
    result.update({k: decoded[k] for k in (
        'bleu', 'chrf', 'bleu_signature', 'chrf_signature', 'beam_size', 'step')})
  with open(result_path, 'w') as f:
    json.dump(result, f, indent=2)
  return result


def run_configs(scale: str, *, seeds: int = 1, variants: Optional[Sequence[str]] = None,
                ablations: bool = True, overrides: Optional[Mapping[str, Any]] = None
                ) -> dict[str, ml_collections.ConfigDict]:
  """{'<run>/seed_<n>': config} of every run of the study, overrides applied."""
  variants = list(variants or variant_names())
  runs = {name: (name, {}) for name in variants}
  if ablations:
    runs.update(ABLATIONS)
  out = {}
  for run_name, (variant, run_overrides) in runs.items():
    for seed in range(seeds if run_name in variants else 1):
      config = configs.get_variant(variant, scale)
      config_utils.apply_overrides(config, overrides or {})
      if run_name not in variants:
        run_overrides = {**run_overrides, 'num_train_steps': max(
            1, int(config.num_train_steps * ABLATION_STEPS_FRACTION))}
      config_utils.apply_overrides(config, run_overrides)
      config.seed = seed
      out[os.path.join(run_name, f'seed_{seed}')] = config
  return out


def run_study(scale: str, experiment_dir: str, *, seeds: int = 1,
              variants: Optional[Sequence[str]] = None, ablations: bool = True,
              overrides: Optional[Mapping[str, Any]] = None) -> str:
  """Runs every (variant, seed) and the ablations; returns the path of REPORT.md."""
  variants = list(variants or variant_names())
  for run, config in run_configs(scale, seeds=seeds, variants=variants, ablations=ablations,
                                 overrides=overrides).items():
    run_one(config, os.path.join(experiment_dir, run))
  baseline_dir = os.path.join(experiment_dir, 'baseline', 'seed_0')
  if 'baseline' in variants and os.path.exists(os.path.join(baseline_dir, RESULT_FILE)):
    write_attention_maps(baseline_dir, os.path.join(experiment_dir, report.ATTENTION_DIR))
  return report.write_report(experiment_dir, variants=variants,
                             ablations=list(ABLATIONS) if ablations else [])


def write_attention_maps(workdir: str, out_dir: str) -> None:
  """Heatmaps of every attention of the run, for the first sentence of its test split."""
  sentence, _ = input_pipeline.load_pairs(checkpoints.load_config(workdir), 'test')[0]
  inference.write_attention_maps(workdir, sentence, out_dir, checkpoint='best')
  with open(os.path.join(out_dir, 'sentence.txt'), 'w') as f:
    f.write(sentence + '\n')
