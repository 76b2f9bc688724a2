"""The study: train every variant in configs/, decode each on the test split, write a report.

  python -m transformer.study --scale=small --experiment_dir=experiments/small

Each run lives in `<experiment_dir>/<variant>/seed_<n>/`; an unfinished run resumes and a
finished one is skipped, so the command can be re-run after any interruption. Two extra
runs form the warm-up ablation (post-LN and pre-LN with no warm-up). The report,
`<experiment_dir>/REPORT.md`, and its plots are computed from the runs' metrics.jsonl and
test_result.json files only.
"""

import importlib
import json
import os
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

import configs
from transformer import checkpoints
from transformer import report
from transformer import train_lib

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


def load_variant(name: str, scale: str) -> ml_collections.ConfigDict:
  if name not in variant_names():
    raise ValueError(f'Unknown variant {name!r}; configs/ has: {", ".join(variant_names())}.')
  return importlib.import_module(f'configs.{name}').get_config(scale)


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) one run, then decodes its best checkpoint on the test split."""
  from transformer import decode_lib  # pylint: disable=g-import-not-at-top
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
    train_lib.train_and_evaluate(config, workdir)
    result['diverged'] = False
  except train_lib.NonFiniteLossError as e:
    logging.warning('%s diverged: %s', workdir, e)
    result['diverged'] = True
    result['error'] = str(e)
  result['train_seconds_this_invocation'] = time.perf_counter() - started
  if not result['diverged']:
    decoded = decode_lib.decode(workdir, checkpoint='best', split='test',
                                output_path=os.path.join(workdir, 'test_hypotheses.en'))
    result.update({k: decoded[k] for k in (
        'bleu', 'chrf', 'bleu_signature', 'chrf_signature', 'beam_size', 'step')})
  with open(result_path, 'w') as f:
    json.dump(result, f, indent=2)
  return result


def run_study(scale: str, experiment_dir: str, *, seeds: int = 1,
              variants: Optional[Sequence[str]] = None, ablations: bool = True,
              overrides: Optional[dict] = None) -> str:
  """Runs every (variant, seed) and the ablations; returns the path of REPORT.md."""
  variants = list(variants or variant_names())
  runs = {name: (name, {}) for name in variants}
  if ablations:
    runs.update(ABLATIONS)
  for run_name, (variant, run_overrides) in runs.items():
    for seed in range(seeds if run_name in variants else 1):
      config = load_variant(variant, scale)
      apply_overrides(config, overrides or {})
      if run_name not in variants:
        run_overrides = {**run_overrides, 'num_train_steps': max(
            1, int(config.num_train_steps * ABLATION_STEPS_FRACTION))}
      apply_overrides(config, run_overrides)
      config.seed = seed
      run_one(config, os.path.join(experiment_dir, run_name, f'seed_{seed}'))
  baseline_dir = os.path.join(experiment_dir, 'baseline', 'seed_0')
  if 'baseline' in variants and os.path.exists(os.path.join(baseline_dir, RESULT_FILE)):
    write_attention_maps(baseline_dir, os.path.join(experiment_dir, report.ATTENTION_DIR))
  return report.write_report(experiment_dir, variants=variants,
                             ablations=list(ABLATIONS) if ablations else [])


def write_attention_maps(workdir: str, out_dir: str) -> None:
  """Heatmaps of every attention of the run, for the first sentence of its test split."""
  from transformer import decode_lib  # pylint: disable=g-import-not-at-top
  from transformer import input_pipeline  # pylint: disable=g-import-not-at-top
  sentence, _ = input_pipeline.load_pairs(checkpoints.load_config(workdir), 'test')[0]
  decode_lib.write_attention_maps(workdir, sentence, out_dir, checkpoint='best')
  with open(os.path.join(out_dir, 'sentence.txt'), 'w') as f:
    f.write(sentence + '\n')


_SCALE = flags.DEFINE_enum('scale', 'small', ['small', 'full'], 'Scale of every run.')
_EXPERIMENT_DIR = flags.DEFINE_string('experiment_dir', None, 'Where runs and the report go.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Seeds per variant (mean ± std in the report).')
_VARIANTS = flags.DEFINE_list('variants', None, 'Subset of variants (default: all).')
_NO_ABLATIONS = flags.DEFINE_bool('no_ablations', False, 'Skip the warm-up ablation runs.')
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'field=value applied to every run, e.g. num_train_steps=3000.')


def _parse_overrides(items: Sequence[str]) -> dict:
  """['model.emb_dim=64', 'lr_schedule=cosine'] -> {'model.emb_dim': 64, ...} (JSON values)."""
  overrides = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--override wants field=value, got {item!r}.')
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key] = value  # A bare word, e.g. lr_schedule=cosine.
  return overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
  """Sets dotted fields; an unknown field is an error (ConfigDict refuses new keys)."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise KeyError(f'Unknown config field {key!r}.')
    node[leaf] = value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  train_lib.quiet_library_logs()
  path = run_study(_SCALE.value, _EXPERIMENT_DIR.value, seeds=_SEEDS.value,
                   variants=_VARIANTS.value, ablations=not _NO_ABLATIONS.value,
                   overrides=_parse_overrides(_OVERRIDE.value))
  logging.info('Report written to %s', path)


if __name__ == '__main__':
  flags.mark_flag_as_required('experiment_dir')
  app.run(main)
