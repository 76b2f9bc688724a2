"""The study: train every variant in configs/, decode each on the test split, write a report.

The stages and the rules between them are data in study_plan.py: the learning-rate grid
(`<experiment_dir>/lr_grid/`), then every variant's seeds at the rate its grid chose
(`<experiment_dir>/<variant>/seed_<n>/`), more seeds where a difference is small, the
same-seed reruns and the learner's runs. An unfinished run resumes and a finished one is
skipped, so the study can be re-run after any interruption, or stopped on purpose with
--max_minutes. The report, `<experiment_dir>/REPORT.md`, and its plots are computed from the
files the runs wrote. The entry point is the top-level study.py.
"""

import functools
import math
import os
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from transformer import cli
from transformer import config_checks
from transformer import config_utils
from transformer import datasets
from transformer import flops
from transformer import inference
from transformer import input_pipeline
from transformer import learner as learner_lib
from transformer import models
from transformer import processes
from transformer import provenance
from transformer import report
from transformer import report_grid
from transformer import study_plan as plan_lib
from transformer import training
from transformer import translator as translator_lib
from transformer import variants as variants_lib
from transformer import workdir as workdir_lib
from transformer.datasets import iwslt2017_fr_en

# The plan's GPU: NVIDIA H200 SXM, 989 TFLOP/s dense bfloat16 (NVIDIA's data sheet; 1,979 is
# with 2:4 sparsity). The MFU is an assumption, not a measurement: ~40% is what well-tuned
# Transformer training reaches on Hopper; float32 runs use the TF32 peak, half of it.
PLAN_GPU = ('H200', 989e12)
PLAN_MFU = 0.40
# Without the prepared dataset: the release's 232,825 training pairs (the builder's docstring)
# times the target tokens per pair measured on the shipped tst2016 files with the largest
# vocabulary they can train (`python -m benchmarks.data_stats`, 4,000 pieces: 26.83); a 16k
# vocabulary splits words less, so this over-estimates tokens, and so steps and time.
PUBLISHED_TRAIN_PAIRS = 232_825
TST2016_TARGET_TOKENS_PER_PAIR = 26.83


def variant_names() -> list[str]:
  """Every variant file in configs/ (the study's ten first, then any extras)."""
  found = variants_lib.variant_names()
  return ([n for n in plan_lib.STUDY_VARIANTS if n in found] +
          [n for n in found if n not in plan_lib.STUDY_VARIANTS])


class RunInterrupted(cli.UserError):
  """A run stopped before its last step (SIGTERM, Ctrl-C or --max_minutes): saved, unfinished."""


class TimeUp(Exception):
  """study.py --max_minutes ran out between runs or inside one; everything is saved."""


def _check_same_experiment(workdir: str, recorded: ml_collections.ConfigDict,
                           config: ml_collections.ConfigDict) -> None:
  """Refuses a finished run of another experiment, whose result would be taken for this one's.

  Only the config is compared (the fields a run may resume with changed aside), not the
  history that Workdir.check_before_training also checks before training: a finished run
  trains no more, and a fresh clone of a study holds its finished runs without checkpoints.
  The comparison is written here rather than split out of workdir.py (training code) so that
  this file also runs on a study's older training code (scripts/study_checkout.sh).
  """
  old, new = (config_utils.flatten(config_utils.to_dict(c)) for c in (recorded, config))
  differences = sorted(key for key in set(old) | set(new)
                       if key not in workdir_lib.RESUMABLE_FIELDS and old.get(key) != new.get(key))
  if differences:
    raise cli.UserError(f'{workdir} is a finished run of another experiment (it differs in '
                        f"{', '.join(differences)}): give a new --experiment_dir.")


def run_one(config: ml_collections.ConfigDict, workdir: str, *, split: str = 'test',
            stop_at: Optional[float] = None) -> dict:
  """Trains (or resumes) one run, then decodes its best checkpoint on `split`.

  A finished run is skipped if this code trained it (provenance.code_version) with this
  config; one of other code or another config is refused, since the report could not put
  the two in one table. A run stopped short (SIGTERM, Ctrl-C, or `stop_at`, a time.time())
  raises RunInterrupted and writes no result, so that the next invocation resumes it instead
  of skipping it as finished.
  """
  run = workdir_lib.Workdir(workdir)
  version = provenance.code_version()
  result = run.result()
  if result is not None:
    if result.get('code_version') != version:
      trained_by = result.get('code_version', 'of an unrecorded version')
      raise cli.UserError(
          f'{workdir} was finished by code {trained_by}, this checkout is {version}: one '
          'study holds runs of one code version. Give a new --experiment_dir (or move that '
          'run away to retrain it); study.py --report writes the report of a finished '
          'study from its runs as they are.')
    recorded = run.config()
    _check_same_experiment(workdir, recorded, config)
    if (config.num_train_steps in (0, recorded.num_train_steps) and
        config.patience == recorded.patience):
      logging.info('%s is finished; skipping it.', workdir)
      return result
  result = {'code_version': version, 'git_commit': provenance.git_commit(), 'split': split}
  started = time.perf_counter()
  try:
    last_metrics = training.train_and_evaluate(config, workdir, stop_at=stop_at)
    result['diverged'] = False
    _check_finished(run, last_metrics)
    result['stopped_early_at_step'] = last_metrics.get('train/stopped_early_at_step')
  except training.NonFiniteLossError as e:
    logging.warning('%s diverged: %s', workdir, e)
    result['diverged'] = True
    result['error'] = str(e)
  result['num_train_steps'] = run.config().num_train_steps
  result['train_seconds_this_invocation'] = time.perf_counter() - started
  if not result['diverged']:
    result.update(_decode(config, run, 'best', split))
    if config.average_checkpoints:
      result['average'] = _decode(config, run, f'average:{config.average_checkpoints}', split)
  run.write_result(result)
  return result


def _check_finished(run: workdir_lib.Workdir, last_metrics: dict) -> None:
  """Raises RunInterrupted unless the run reached its last step or stopped early by patience.

  The last step is the run's recorded config's, which holds the budget resolved from
  num_train_epochs when num_train_steps is 0 (the full scale).
  """
  saved = run.saved_steps()
  step, budget = (saved[-1] if saved else 0), run.config().num_train_steps
  if step < budget and 'train/stopped_early_at_step' not in last_metrics:
    raise RunInterrupted(f'{run.path} stopped at step {step} of {budget} and is saved; run the '
                         'same command again to resume it.')


def _decode(config: ml_collections.ConfigDict, run: workdir_lib.Workdir, checkpoint: str,
            split: str) -> dict:
  """BLEU/chrF of one checkpoint on `split`; for IWSLT's test split also of each year.

  The test split is the years concatenated in order, so each year is scored on its slice of
  the one decoding (the concatenation's score is not the mean of the years': BLEU pools
  n-gram counts).
  """
  decoded = inference.decode(run.path, checkpoint=checkpoint, split=split,
                             write_translations=False)
  run.write_hypotheses(checkpoint, decoded['hypotheses'], split)
  result = {k: decoded[k] for k in (
      'bleu', 'chrf', 'bleu_signature', 'chrf_signature', 'beam_size', 'step')}
  if config.dataset_name == 'iwslt2017_fr_en' and split == 'test':
    result['test_sets'], start = {}, 0
    for year in iwslt2017_fr_en.TEST_SETS:
      references = [en for _, en in datasets.load_pairs(config, year)]
      hypotheses = decoded['hypotheses'][start:start + len(references)]
      start += len(references)
      scores = translator_lib.score(hypotheses, [references])
      result['test_sets'][year] = {'bleu': scores['bleu'], 'chrf': scores['chrf']}
  return result


class Study:
  """One study's runs: the configs of each stage, and what finished runs decided.

  Every config is the variant's, then study_plan.REGIMES[scale], then `overrides`, then what
  the stage sets (seed, rate factor, grid budget).
  """

  def __init__(self, scale: str, experiment_dir: str = '', *,
               variants: Optional[Sequence[str]] = None, seeds: int = plan_lib.FIRST_SEEDS,
               more_seeds: int = plan_lib.MORE_SEEDS, lr_grid: bool = True,
               learner: bool = True, reruns: bool = True,
               overrides: Optional[Mapping[str, Any]] = None):
    self.scale, self.variants = scale, list(variants or variant_names())
    self.seeds, self.more_seeds = seeds, max(seeds, more_seeds)
    self.lr_grid, self.learner, self.reruns = lr_grid, learner, reruns
    self.overrides = dict(overrides or {})
    self.experiment = workdir_lib.ExperimentDir(experiment_dir) if experiment_dir else None

  def config(self, variant: str, seed: int = 0, factor: float = 1.0,
             changes: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
    config = variants_lib.get_variant(variant, self.scale)
    config_utils.apply_overrides(config, {**plan_lib.REGIMES[self.scale], **self.overrides})
    config_utils.apply_overrides(config, dict(changes or {}))
    config.seed = seed
    config.learning_rate = config.learning_rate * factor
    return config

  def grid_configs(self) -> dict[str, ml_collections.ConfigDict]:
    """The grid: each norm variant studied at every factor its finished grid runs call for
    (study_plan.grid_factors), one seed, a short budget."""
    points = report_grid.grid_points(self.experiment) if self.experiment else {}
    out = {}
    for variant in [v for v in self.variants if v in plan_lib.NORM_VARIANTS] if self.lr_grid else ():
      for factor in report_grid.factors_of(points.get(variant, {})):
        config = self.config(variant, factor=factor)
        grid = {'patience': 0}
        if config.num_train_steps:
          grid['num_train_steps'] = max(1, int(config.num_train_steps * plan_lib.GRID_FRACTION))
        else:
          grid['num_train_epochs'] = config.num_train_epochs * plan_lib.GRID_FRACTION
        config_utils.apply_overrides(config, grid)
        out[workdir_lib.run_name(plan_lib.grid_name(variant, factor))] = config
    return out

  def factors(self) -> dict[str, float]:
    """The rate factor each variant trains at: its grid's choice (report_grid, so that the
    report shows the same), or the baseline's for a variant that changes no norm; 1 without
    a grid, or where no rate of it trained a model that uses the source."""
    chosen = (report_grid.choices(report_grid.grid_points(self.experiment))
              if self.lr_grid and self.experiment else {})
    factors = {}
    for variant in self.variants:
      owner = plan_lib.rate_variant(variant)
      factors[variant] = chosen.get(owner) or 1.0
      if self.experiment and self.lr_grid and owner in self.variants and not chosen.get(owner):
        logging.warning('No rate of the grid trained a %s model that uses the source (or the '
                        'grid is unfinished); %s trains at its configured rate.', owner, variant)
    return factors

  def seed_configs(self, seeds_of: Mapping[str, int]) -> dict[str, ml_collections.ConfigDict]:
    """Each variant at its chosen rate, seeds 0 .. seeds_of[variant] - 1; then the learner's
    runs and the same-seed reruns, which take the baseline's rate."""
    factors = self.factors()
    out = {}
    for seed in range(max(seeds_of.values(), default=0)):
      for variant in self.variants:
        if seed < seeds_of[variant]:
          out[workdir_lib.run_name(variant, seed)] = self.config(variant, seed, factors[variant])
    base = 'baseline' if 'baseline' in self.variants else None
    for name, (variant, changes) in plan_lib.LEARNER_RUNS.items() if self.learner and base else ():
      out[workdir_lib.run_name(name)] = self.config(variant, 0, factors[variant], changes)
    for variant, seed in plan_lib.RERUNS if self.reruns else ():
      if variant in self.variants and seed < seeds_of[variant]:
        out[workdir_lib.run_name(plan_lib.rerun_name(variant), seed)] = self.config(
            variant, seed, factors[variant])
    return out

  def seeds_of(self) -> dict[str, int]:
    """Seeds per variant: the first seeds, more where the test BLEU is close to the baseline's
    (study_plan.seeds_needed; the baseline then gets as many, for paired comparisons)."""
    seeds = {v: self.seeds for v in self.variants}
    if self.experiment is None or 'baseline' not in self.variants:
      return seeds
    bleus = lambda v: [r['bleu'] for _, run in self.experiment.seeds(v)
                       if (r := run.result()) and not r['diverged']]
    for variant in self.variants:
      if variant != 'baseline':
        seeds[variant] = plan_lib.seeds_needed(bleus(variant), bleus('baseline'),
                                               first=self.seeds, more=self.more_seeds)
    seeds['baseline'] = max(seeds.values())
    return seeds

  def planned(self) -> dict[str, ml_collections.ConfigDict]:
    """Every run known before training: the grid, then the first seeds (rate factor 1)."""
    return {**self.grid_configs(), **self.seed_configs({v: self.seeds for v in self.variants})}


def pilot_configs(scale: str) -> dict[str, ml_collections.ConfigDict]:
  """{'pilot/<candidate>/seed_0': config}: the baseline under PILOT_RULE at each candidate."""
  out = {}
  for name, changes in plan_lib.PILOT_RUNS.items():
    config = variants_lib.get_variant('baseline', scale)
    config_utils.apply_overrides(config, {**plan_lib.PILOT_RULE, **changes})
    out[workdir_lib.run_name(name)] = config
  return out


def run_pilot(scale: str, experiment_dir: str, parallel_runs: int = 1,
              max_minutes: Optional[float] = None) -> None:
  """Trains (or resumes) the pilot's runs and decodes each on the test split."""
  experiment = workdir_lib.ExperimentDir(experiment_dir)
  experiment.check_not_a_run()
  _run_jobs([(config, os.path.join(experiment.path, run))
             for run, config in pilot_configs(scale).items()], parallel_runs,
            _deadline(max_minutes))


def _deadline(max_minutes: Optional[float]) -> Optional[float]:
  return None if max_minutes is None else time.time() + 60 * max_minutes


def _run_jobs(jobs: Sequence[tuple[ml_collections.ConfigDict, str]], parallel_runs: int,
              stop_at: Optional[float], split: str = 'test') -> None:
  """run_one on each (config, workdir), `parallel_runs` at once, each in its own process.

  Raises TimeUp once `stop_at` has passed: before a run starts, or when one was stopped by it.
  A run that fails stops the others (each saves) and is raised as a UserError.
  """
  for config, _ in jobs:  # Every run's config is checked before the first trains.
    config_checks.validate(config)
  if parallel_runs > 1 and len(jobs) > 1:
    # Built here once: runs starting together would each build the dataset and vocabulary.
    for data in {(c.dataset_name, c.data_dir, c.vocab_size): c for c, _ in jobs}.values():
      input_pipeline.prepare_vocabulary(data)
    try:
      statuses = processes.run(_run_process, [(c, w, split, stop_at) for c, w in jobs],
                               parallel_runs, functools.partial(cli.log_as_in_parent, sys.argv))
    except processes.Interrupted:
      raise RunInterrupted('SIGTERM: every run under way was stopped and saved; the same '
                           'command resumes them.') from None
    failed = [workdir for (_, workdir), status in zip(jobs, statuses)
              if status not in (None, 0, processes.DEADLINE_EXIT)]
    if failed:
      raise cli.UserError(f"{', '.join(failed)} ended with an error (above); the runs under "
                          'way were stopped and saved, and the same command resumes them.')
    if any(status != 0 for status in statuses):
      raise TimeUp()
    return
  for config, workdir in jobs:
    if _run_before_deadline(config, workdir, split=split, stop_at=stop_at) is None:
      raise TimeUp()


def _run_process(config: ml_collections.ConfigDict, workdir: str, split: str,
                 stop_at: Optional[float]) -> None:
  """One run in its own process (processes.run): exit status 0 when it finished,
  processes.DEADLINE_EXIT when `stop_at` stopped it (saved), 1 after an error."""
  try:
    result = _run_before_deadline(config, workdir, split=split, stop_at=stop_at)
  except RunInterrupted as e:  # Ctrl-C or SIGTERM: saved.
    logging.warning('%s', e)
    sys.exit(1)
  except cli.UserError as e:
    logging.error('%s', e)
    sys.exit(1)
  if result is None:
    sys.exit(processes.DEADLINE_EXIT)


def _run_before_deadline(config: ml_collections.ConfigDict, workdir: str, *, split: str,
                         stop_at: Optional[float]) -> Optional[dict]:
  """run_one, or None when `stop_at` passed before it started or while it trained."""
  if stop_at is not None and time.time() >= stop_at:
    return None
  try:
    return run_one(config, workdir, split=split, stop_at=stop_at)
  except RunInterrupted:
    if stop_at is not None and time.time() >= stop_at:
      return None
    raise


def run_study(study: Study, *, parallel_runs: int = 1,
              max_minutes: Optional[float] = None) -> Optional[str]:
  """Runs the study's stages (study_plan) and writes REPORT.md; returns its path, or None
  when `max_minutes` ran out first (every run is saved: the same call resumes).

  With parallel_runs > 1, that many runs train at once, each in its own process: on the
  2-core CPU two runs at once give more steps an hour than one (benchmarks.concurrent_runs
  measures it), since one small step leaves cores idle between its ops.
  """
  experiment = study.experiment
  experiment.check_not_a_run()
  stop_at = _deadline(max_minutes)
  first = study.config(study.variants[0])
  write_references(first, experiment)
  try:
    grid, trained = study.grid_configs(), {}
    while grid.keys() != trained.keys():  # A finished grid can call for a rate past its edge.
      _run_jobs(_jobs(experiment, grid), parallel_runs, stop_at, split=plan_lib.GRID_SPLIT)
      grid, trained = study.grid_configs(), grid
    seeds = {v: study.seeds for v in study.variants}
    _run_jobs(_jobs(experiment, study.seed_configs(seeds)), parallel_runs, stop_at)
    _run_jobs(_jobs(experiment, study.seed_configs(study.seeds_of())), parallel_runs, stop_at)
  except TimeUp:
    logging.warning('--max_minutes=%g is up; every run is saved. Run the same command again '
                    'to go on.', max_minutes)
    return None
  return _write_report(study, measure_learner=True)


def _write_report(study: Study, *, measure_learner: bool) -> str:
  """The learner's measurements (again if `measure_learner`, else only where none were
  written), then REPORT.md; returns its path."""
  experiment = study.experiment
  measured = os.path.exists(experiment.file(experiment.LEARNER, experiment.LEARNER_RESULT))
  if study.learner and 'baseline' in study.variants and (measure_learner or not measured):
    write_learner(experiment, study.variants)
  return report.write_report(experiment.path, variants=study.variants)


def progress(study: Study) -> list[str]:
  """Where each run of the study stands, read from its folder; nothing trains.

  A run is finished (its BLEU on the split it was decoded on, the step it stopped at and
  the step of the checkpoint it was scored at), diverged, saved at a step (the study
  resumes it there), or not started. The seed runs listed are those the finished runs
  decide so far: rates from the grid, more seeds once the first ones are in.
  """
  counts = dict.fromkeys(('finished', 'diverged', 'saved', 'not started'), 0)
  lines = ['| run | state | steps trained | scored at step | BLEU | split |',
           '|---|---|---|---|---|---|']
  for name, config in _known_runs(study).items():
    run = workdir_lib.Workdir(os.path.join(study.experiment.path, name))
    result = run.result() if run.exists() else None
    saved = run.saved_steps() if run.exists() and result is None else []
    if result is not None:
      state = 'diverged' if result['diverged'] else 'finished'
      trained = result.get('stopped_early_at_step') or result['num_train_steps']
      cells = [f'{trained:,}', f"{result['step']:,}" if 'step' in result else '–',
               f"{result['bleu']:.2f}" if 'bleu' in result else '–', result.get('split', '–')]
    elif saved:
      state = 'saved'
      cells = [f'{saved[-1]:,} of {config.num_train_steps:,}', '–', '–', '–']
    else:
      state = 'not started'
      cells = ['0', '–', '–', '–']
    counts[state] += 1
    lines.append(f"| {name} | {state} | {' | '.join(cells)} |")
  lines.append('\n' + ', '.join(f'{n} {state}' for state, n in counts.items()) +
               f' of the {sum(counts.values())} runs known now (study_plan adds seeds where a '
               'variant ends close to the baseline).')
  return lines


def report_finished(study: Study) -> str:
  """REPORT.md from the study's finished runs, training nothing; returns its path.

  For a study whose runs are all finished, whichever code version trained them: run_study
  refuses finished runs of another version (it would mix them with the runs it trains),
  so once the training code moves on, this is how the committed runs give their report
  again. The learner's measurements are reused where they were written; the report still
  refuses runs of more than one version.
  """
  experiment = study.experiment
  results = {name: workdir_lib.Workdir(os.path.join(experiment.path, name)).result()
             for name in _known_runs(study)}
  unfinished = [name for name, result in results.items() if result is None]
  if unfinished:
    raise cli.UserError(
        f"{len(unfinished)} runs of the study are not finished ({', '.join(unfinished[:3])}"
        f"{', ...' if len(unfinished) > 3 else ''}): `--status` lists them, and the study "
        'command without --report trains them.')
  write_references(study.config(study.variants[0]), experiment)
  version = provenance.code_version()
  trained_by = {result.get('code_version') for result in results.values()}
  if trained_by != {version}:
    logging.warning('The runs were trained by %s; this checkout is %s. The report is '
                    'written from the runs as they are.', ', '.join(sorted(map(str, trained_by))),
                    version)
  return _write_report(study, measure_learner=False)


def _known_runs(study: Study) -> dict[str, ml_collections.ConfigDict]:
  """Every run the finished runs call for so far: the grid, and the seeds at its rates."""
  return {**study.grid_configs(), **study.seed_configs(study.seeds_of())}


def _jobs(experiment: workdir_lib.ExperimentDir, configs: Mapping[str, ml_collections.ConfigDict]
          ) -> list[tuple[ml_collections.ConfigDict, str]]:
  return [(config, os.path.join(experiment.path, run)) for run, config in configs.items()]


def write_references(config: ml_collections.ConfigDict,
                     experiment: workdir_lib.ExperimentDir) -> None:
  """The test and validation splits' English sides, one line a sentence: the report's
  bootstrap and the grid's source-use check read them."""
  os.makedirs(experiment.path, exist_ok=True)
  for split, name in (('test', experiment.REFERENCES),
                      ('validation', experiment.VALIDATION_REFERENCES)):
    references = [en for _, en in datasets.load_pairs(config, split)]
    with open(experiment.file(name), 'w') as f:
      f.write(''.join(line + '\n' for line in references))


def write_learner(experiment: workdir_lib.ExperimentDir,
                  variants: Sequence[str]) -> Optional[str]:
  """learner.measure on the study's runs; None (nothing written) until the baseline is done.

  The attention is read from the finished seed-0 run with the best test BLEU (the maps of
  the model that translates best); BatchNorm's batch dependence from the batch_norm run.
  """
  if experiment.run('baseline').result() is None:
    return None
  finished = lambda name: (result := experiment.run(name).result()) is not None and (
      not result['diverged'])
  bleus = {name: experiment.run(name).result()['bleu'] for name in variants if finished(name)}
  optional = lambda name: experiment.run(name).path if finished(name) else None
  return learner_lib.measure(
      experiment.path, translating=experiment.run(max(bleus, key=bleus.get)).path,
      baseline=experiment.run('baseline').path, batch_norm=optional('batch_norm'),
      no_positions=optional('learner/no_positions'))


def _epoch_steps(config: ml_collections.ConfigDict, prepared: dict) -> tuple[float, bool]:
  """(optimizer steps per epoch, measured?): measured on the data, estimated for IWSLT 2017
  when its release is not prepared here (the embedded Bible is prepared in seconds).

  `prepared` caches each dataset's tokenized training pairs across the plan's runs, which
  share a few datasets: tokenizing once per run made a dry run take minutes.
  """
  if datasets.is_prepared(config) or config.dataset_name != 'iwslt2017_fr_en':
    key = (config.dataset_name, config.data_dir, config.vocab_size, config.max_train_pairs,
           config.max_length, config.max_target_length)
    if key not in prepared:
      prepared[key] = input_pipeline.prepare(config, evaluate=False).train
    _, per_epoch = training.epoch_budget(config, prepared[key], quiet=True)
    return per_epoch, True
  positions = (input_pipeline.micro_batch_rows(config) * config.max_target_length *
               config.grad_accum_steps)
  return PUBLISHED_TRAIN_PAIRS * TST2016_TARGET_TOKENS_PER_PAIR / positions, False


@functools.lru_cache
def _parameter_count(model_config: models.ModelConfig) -> int:
  """Parameters of a model, from its shapes alone (the plan's runs share a few models)."""
  model = models.Transformer(model_config)
  dummy = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))
  return sum(x.size for x in jax.tree.leaves(shapes['params']))


def plan(study: Study) -> list[str]:
  """The study's runs known before training, with their budgets and the time they would
  take on PLAN_GPU.

  Nothing is trained. Steps are each run's budget, an upper bound where patience stops runs
  earlier; the seed runs' rates are chosen by the grid, and close variants get more seeds
  (study_plan), so those runs are added as the study goes. FLOPs per step are flops.train_step_flops over every row of the
  optimizer step (R-Drop runs the model twice: twice the FLOPs); time = steps * FLOPs /
  (peak * PLAN_MFU), an estimate. Memory: float32 params, gradients and Adam's two moments
  (16 bytes a parameter; + 4 for MultiSteps' sum), without activations, which need the GPU
  to measure.
  """
  gpu, peak = PLAN_GPU
  lines, total_seconds, measured_all, prepared = [], 0.0, True, {}
  header = ('| run | steps | epochs | tokens/step | accum | dtype | params | GFLOP/step '
            f'| {gpu} h at {PLAN_MFU:.0%} MFU | params+Adam GiB |')
  lines += [header, '|' + '---|' * 10]
  for run, config in study.planned().items():
    config_checks.validate(config)
    per_epoch, measured = _epoch_steps(config, prepared)
    measured_all &= measured
    steps = config.num_train_steps or math.ceil(config.num_train_epochs * per_epoch)
    model_config = models.ModelConfig.from_config(config.model)
    dtype = models.resolve_dtype(config.model.dtype, 'gpu')
    rows = input_pipeline.micro_batch_rows(config) * config.grad_accum_steps
    step_flops = flops.config_step_flops(config)
    run_peak = peak if dtype.itemsize == 2 else peak / 2
    seconds = steps * step_flops / (run_peak * PLAN_MFU)
    total_seconds += seconds
    params = _parameter_count(model_config)
    state_bytes = params * (16 + (4 if config.grad_accum_steps > 1 else 0))
    lines.append(f'| {run} | {steps:,} | {steps / per_epoch:.1f} | '
                 f'{rows * config.max_target_length:,} | {config.grad_accum_steps} | '
                 f'{dtype.name} | {params:,} | {step_flops / 1e9:,.0f} | {seconds / 3600:.2f} '
                 f'| {state_bytes / 2**30:.2f} |')
  lines.append(f'| total | | | | | | | | {total_seconds / 3600:.1f} | |')
  source = ('steps per epoch measured on the prepared train split' if measured_all else
            f'ESTIMATES: the train split is not prepared, so steps per epoch are '
            f'{PUBLISHED_TRAIN_PAIRS:,} published pairs x {TST2016_TARGET_TOKENS_PER_PAIR} '
            'target tokens per pair (measured on tst2016 with a 4k vocabulary: an '
            'over-estimate) over full rows')
  lines.append(f'\n{source}. Steps are budgets: patience on validation BLEU stops runs '
               'sooner, and variants within study_plan.CLOSE_BLEU of the baseline get '
               f'{study.more_seeds} seeds. Hours are an estimate: FLOPs / ({gpu} {peak / 1e12:,.0f} '
               f'TFLOP/s dense bf16 x an assumed {PLAN_MFU:.0%} MFU), evaluation and decoding '
               'excluded; no GPU was used.')
  return lines
