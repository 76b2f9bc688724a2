"""Runs the study: every variant in configs/, test BLEU for each, and REPORT.md.

  python study.py --scale=small --experiment_dir=results/small --seeds=3 --parallel_runs=2
  python study.py --scale=full --dry_run     # the plan: steps, tokens, FLOPs, GPU hours

`--config.<field>=value` overrides a field of every run, exactly as in train.py. Re-run the
same command after an interruption: finished runs are skipped, an unfinished one resumes.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import base
from transformer import cli
from transformer import study

_SCALE = flags.DEFINE_enum('scale', 'small', list(base.SCALES), 'Scale of every run.')
_EXPERIMENT_DIR = flags.DEFINE_string('experiment_dir', '', 'Where runs and the report go.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per variant (mean ± std in the report).',
                              lower_bound=1)
_VARIANTS = flags.DEFINE_list('variants', None, 'Subset of variants (default: all).')
_NO_LR_GRID = flags.DEFINE_bool('no_lr_grid', False, 'Skip the learning-rate grid.')
_NO_LEARNER = flags.DEFINE_bool('no_learner', False, "Skip the learner section's runs.")
_PARALLEL_RUNS = flags.DEFINE_integer('parallel_runs', 1, 'Runs that train at once, each in '
                                      'its own process.', lower_bound=1)
_PILOT = flags.DEFINE_bool('pilot', False, "Train only the pilot's runs (study.PILOT_RUNS), "
                           'which choose the regime.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, "Print every run's budget, FLOPs and estimated "
                             'GPU time; train nothing.')
# Only the fields given on the command line are applied to every run (each variant keeps
# its own values for the rest); the base config here gives their names and types.
_CONFIG = cli.define_config_overrides(
    'config', base.get_config(), 'Overrides for every run: --config.<field>=value.')


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'Unexpected arguments: {argv[1:]}')
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  runs = dict(seeds=_SEEDS.value, variants=_VARIANTS.value, lr_grid=not _NO_LR_GRID.value,
              learner=not _NO_LEARNER.value,
              overrides=overrides)
  if _DRY_RUN.value:
    print('\n'.join(study.plan(_SCALE.value, **runs)))
    return
  if not _EXPERIMENT_DIR.value:
    raise cli.UserError('--experiment_dir is required (except with --dry_run).')
  if _PILOT.value:
    study.run_pilot(_SCALE.value, _EXPERIMENT_DIR.value, parallel_runs=_PARALLEL_RUNS.value)
    return
  path = study.run_study(_SCALE.value, _EXPERIMENT_DIR.value, **runs,
                         parallel_runs=_PARALLEL_RUNS.value)
  logging.info('Report written to %s', path)


if __name__ == '__main__':
  cli.run(main)
