"""Runs the study: the learning-rate grid, every variant's seeds, and REPORT.md.

  python study.py --scale=small --experiment_dir=results/bible --parallel_runs=2
  python study.py --scale=small --experiment_dir=results/bible --max_minutes=170
  python study.py --scale=bible_base --dry_run     # the plan: steps, tokens, FLOPs, GPU hours
  python study.py --scale=small --experiment_dir=results/bible --status   # what is done
  python study.py --scale=small --experiment_dir=results/bible --report   # REPORT.md again

`--config.<field>=value` overrides a field of every run, exactly as in train.py. Re-run the
same command after an interruption or --max_minutes: finished runs are skipped, an
unfinished one resumes from its last checkpoint.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import base
from transformer import cli
from transformer import study
from transformer import study_plan

_SCALE = flags.DEFINE_enum('scale', 'small', list(base.SCALES), 'Scale of every run.')
_EXPERIMENT_DIR = flags.DEFINE_string('experiment_dir', '', 'Where runs and the report go.')
_SEEDS = flags.DEFINE_integer('seeds', study_plan.FIRST_SEEDS, 'Seeds of every variant.',
                              lower_bound=1)
_MORE_SEEDS = flags.DEFINE_integer('more_seeds', study_plan.MORE_SEEDS, 'Seeds of a variant '
                                   'within study_plan.CLOSE_BLEU of the baseline.', lower_bound=1)
_VARIANTS = flags.DEFINE_list('variants', None, 'Subset of variants (default: all).')
_NO_LR_GRID = flags.DEFINE_bool('no_lr_grid', False, 'Skip the grid: every rate as configured.')
_NO_LEARNER = flags.DEFINE_bool('no_learner', False, "Skip the learner section's runs.")
_PARALLEL_RUNS = flags.DEFINE_integer('parallel_runs', 1, 'Runs that train at once, each in '
                                      'its own process.', lower_bound=1)
_MAX_MINUTES = flags.DEFINE_float('max_minutes', None, 'Save and stop after this many minutes '
                                  '(a decoding under way finishes first).', lower_bound=0)
_PILOT = flags.DEFINE_bool('pilot', False, "Train only the pilot's runs, which chose the regime.")
_STATUS = flags.DEFINE_bool('status', False, 'Print where each run of --experiment_dir stands '
                            '(finished, saved at a step, not started); nothing trains.')
_REPORT = flags.DEFINE_bool('report', False, 'Write REPORT.md from the finished runs of '
                            '--experiment_dir, whichever code version trained them; nothing '
                            'trains.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, "Print every run's budget, FLOPs and estimated "
                             'GPU time; train nothing.')
# Only the fields given on the command line are applied to every run (each variant keeps
# its own values for the rest); the base config here gives their names and types.
_CONFIG = cli.define_config_overrides(
    'config', base.get_config(), 'Overrides for every run: --config.<field>=value.')


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'Unexpected arguments: {argv[1:]}')
  plan = study.Study(
      _SCALE.value, _EXPERIMENT_DIR.value, variants=_VARIANTS.value, seeds=_SEEDS.value,
      more_seeds=_MORE_SEEDS.value, lr_grid=not _NO_LR_GRID.value,
      learner=not _NO_LEARNER.value,
      overrides=config_flags.get_override_values(flags.FLAGS['config']))
  if _DRY_RUN.value:
    print('\n'.join(study.plan(plan)))
    return
  if not _EXPERIMENT_DIR.value:
    raise cli.UserError('--experiment_dir is required (except with --dry_run).')
  if _STATUS.value:
    print('\n'.join(study.progress(plan)))
    return
  if _REPORT.value:
    logging.info('Report written to %s', study.report_finished(plan))
    return
  if _PILOT.value:
    study.run_pilot(_SCALE.value, _EXPERIMENT_DIR.value, _PARALLEL_RUNS.value, _MAX_MINUTES.value)
    return
  path = study.run_study(plan, parallel_runs=_PARALLEL_RUNS.value, max_minutes=_MAX_MINUTES.value)
  if path:
    logging.info('Report written to %s', path)


if __name__ == '__main__':
  cli.run(main)
