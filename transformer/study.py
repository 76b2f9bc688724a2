"""The study: train every variant in configs/, decode each on the test split, write a report.

Each run lives in `<experiment_dir>/<variant>/seed_<n>/`; an unfinished run resumes and a
finished one is skipped, so the study can be re-run after any interruption. Every run
trains in its scale's REGIMES entry; the learning-rate grid's runs live in
`<experiment_dir>/lr_grid/`. The report, `<experiment_dir>/REPORT.md`, and its plots are
computed from the files the runs wrote (metrics.jsonl, test_result.json, the hypotheses).
The entry point is the top-level study.py.
"""

from concurrent import futures
import functools
import math
import multiprocessing
import os
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
from transformer import provenance
from transformer import report
from transformer import training
from transformer import translator as translator_lib
from transformer import variants as variants_lib
from transformer import workdir as workdir_lib
from transformer.datasets import iwslt2017_fr_en

STUDY_VARIANTS = ('baseline', 'pre_ln', 'rms_norm', 'batch_norm', 'deep_norm', 'rezero',
                  'no_dropout', 'strong_dropout', 'label_smoothing', 'r_drop')
# The regime every run of a scale trains in, under any --config overrides. Small: the
# baseline must begin to over-fit, or a regularizer can only slow training. A fixed subset
# of 2,000 Bible pairs (43 steps an epoch) for 1,000 steps, 23 epochs: a pilot of the
# baseline had its best validation loss at step 600, before the last quarter; the report's
# "The regime" checks it again on every seed of the study.
# Full: IWSLT2017's 50 epochs, the experiment as designed.
REGIMES = {
    'small': {'max_train_pairs': 2000, 'num_train_steps': 1000, 'eval_every_steps': 100},
    'full': {},
}
# Learning-rate sensitivity (Xiong et al. 2020; Liu et al. 2020): these variants at each
# multiple of their own peak rate (8x from end to end), with and without warm-up, one seed,
# a quarter of the study's budget: the difference between them shows early.
LR_GRID_VARIANTS = ('baseline', 'pre_ln', 'deep_norm', 'rezero')
LR_GRID_FACTORS = (0.5, 1.0, 2.0, 4.0)
LR_GRID_STEPS_FRACTION = 0.25
LR_GRID_DIR = 'lr_grid'
# Runs for a learner's questions (report, "Questions a learner asks"), one seed in the
# study's budget: without positional encodings (how is word order known?), and on every
# training pair (a model that translates, whose attention maps mean something). A run that
# would equal its variant (all pairs, at a scale that trains on all of them) is left out.
LEARNER_RUNS = {
    'learner/no_positions': ('baseline', {'model.positions': 'none'}),
    'learner/all_pairs': ('baseline', {'max_train_pairs': 0}),
}
# The pilot: the baseline, seed 0, at candidate data sizes under the stopping rule the study
# uses (rsqrt decay, which does not depend on the budget, and patience on validation BLEU,
# the metric that picks the test checkpoint, under a maximum budget). Its curves choose
# REGIMES['small']: the baseline's validation BLEU must peak before the last quarter of the
# budget, and it must translate (test BLEU >= 8, few looping outputs).
PILOT_RULE = {'lr_schedule': 'rsqrt', 'warmup_steps': 400, 'num_train_steps': 8000,
              'eval_every_steps': 400, 'checkpoint_every_steps': 200, 'patience': 5,
              'num_eval_bleu_sentences': 500}
PILOT_RUNS = {
    'pilot/pairs_3000': {'max_train_pairs': 3000},
    'pilot/pairs_8000': {'max_train_pairs': 8000},
    'pilot/pairs_all': {'max_train_pairs': 0},
}
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
  return ([n for n in STUDY_VARIANTS if n in found] +
          [n for n in found if n not in STUDY_VARIANTS])


class RunInterrupted(cli.UserError):
  """A run stopped before its last step (SIGTERM or Ctrl-C): saved, not finished."""


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) one run, then decodes its best checkpoint on the test split.

  A finished run is skipped if this code trained it (provenance.code_version); one of
  other code is refused, since the report could not put the two in one table. A run that
  SIGTERM or Ctrl-C stopped short raises RunInterrupted and writes no result, so that the
  next invocation resumes it instead of skipping it as finished.
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
          'run away to retrain it).')
    if result.get('num_train_steps') == config.num_train_steps:
      logging.info('%s is finished; skipping it.', workdir)
      return result
  result = {'num_train_steps': config.num_train_steps, 'code_version': version,
            'git_commit': provenance.git_commit()}
  started = time.perf_counter()
  try:
    last_metrics = training.train_and_evaluate(config, workdir)
    result['diverged'] = False
    _check_finished(run, last_metrics)
  except training.NonFiniteLossError as e:
    logging.warning('%s diverged: %s', workdir, e)
    result['diverged'] = True
    result['error'] = str(e)
  result['train_seconds_this_invocation'] = time.perf_counter() - started
  if not result['diverged']:
    result.update(_decode_test(config, run, 'best'))
    if config.average_checkpoints:
      result['average'] = _decode_test(config, run, f'average:{config.average_checkpoints}')
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


def _decode_test(config: ml_collections.ConfigDict, run: workdir_lib.Workdir,
                 checkpoint: str) -> dict:
  """Test BLEU/chrF of one checkpoint; for IWSLT also of each year tst2010 ... tst2015.

  The test split is the years concatenated in order, so each year is scored on its slice of
  the one decoding (the concatenation's score is not the mean of the years': BLEU pools
  n-gram counts).
  """
  decoded = inference.decode(run.path, checkpoint=checkpoint, split='test',
                             write_translations=False)
  run.write_hypotheses(checkpoint, decoded['hypotheses'])
  result = {k: decoded[k] for k in (
      'bleu', 'chrf', 'bleu_signature', 'chrf_signature', 'beam_size', 'step')}
  if config.dataset_name == 'iwslt2017_fr_en':
    result['test_sets'], start = {}, 0
    for year in iwslt2017_fr_en.TEST_SETS:
      references = [en for _, en in datasets.load_pairs(config, year)]
      hypotheses = decoded['hypotheses'][start:start + len(references)]
      start += len(references)
      scores = translator_lib.score(hypotheses, [references])
      result['test_sets'][year] = {'bleu': scores['bleu'], 'chrf': scores['chrf']}
  return result


def lr_grid_name(variant: str, factor: float, warmup: bool) -> str:
  """'lr_grid/<variant>_lr<factor>x_warmup' (or '_no_warmup'): one point of the grid."""
  return os.path.join(LR_GRID_DIR,
                      f"{variant}_lr{factor:g}x_{'warmup' if warmup else 'no_warmup'}")


def run_configs(scale: str, *, seeds: int = 1, variants: Optional[Sequence[str]] = None,
                lr_grid: bool = True, learner: bool = True,
                overrides: Optional[Mapping[str, Any]] = None
                ) -> dict[str, ml_collections.ConfigDict]:
  """{'<run>/seed_<n>': config} of every run, in training order: seed 0 of every variant,
  the learner runs, seed 1, ..., then the grid (an interrupted study has whole seeds).

  Each config is the variant's, then REGIMES[scale], then `overrides`. A grid point then
  multiplies that learning rate by its factor (so an overridden rate moves the grid too),
  sets its warm-up, and trains LR_GRID_STEPS_FRACTION of the budget, evaluated at its end.
  """
  variants = list(variants or variant_names())

  def config_of(variant: str, seed: int) -> ml_collections.ConfigDict:
    config = variants_lib.get_variant(variant, scale)
    config_utils.apply_overrides(config, {**REGIMES[scale], **(overrides or {})})
    config.seed = seed
    return config

  out = {}
  for seed in range(seeds):
    out.update({workdir_lib.run_name(name, seed): config_of(name, seed) for name in variants})
    for name, (variant, changes) in LEARNER_RUNS.items() if learner and seed == 0 else ():
      config = config_of(variant, 0)
      unchanged = config_utils.to_dict(config)
      config_utils.apply_overrides(config, changes)
      if config_utils.to_dict(config) != unchanged:
        out[workdir_lib.run_name(name)] = config
  for variant in LR_GRID_VARIANTS if lr_grid else ():
    for factor in LR_GRID_FACTORS:
      for warmup in (True, False):
        config = config_of(variant, 0)
        grid = {'learning_rate': config.learning_rate * factor}
        if not warmup:
          grid['warmup_steps'] = 0
        if config.num_train_steps:
          steps = max(1, int(config.num_train_steps * LR_GRID_STEPS_FRACTION))
          grid.update(num_train_steps=steps, eval_every_steps=steps)
        else:
          grid['num_train_epochs'] = config.num_train_epochs * LR_GRID_STEPS_FRACTION
        config_utils.apply_overrides(config, grid)
        out[workdir_lib.run_name(lr_grid_name(variant, factor, warmup))] = config
  return out


def pilot_configs(scale: str) -> dict[str, ml_collections.ConfigDict]:
  """{'pilot/<candidate>/seed_0': config}: the baseline under PILOT_RULE at each candidate."""
  out = {}
  for name, changes in PILOT_RUNS.items():
    config = variants_lib.get_variant('baseline', scale)
    config_utils.apply_overrides(config, {**PILOT_RULE, **changes})
    out[workdir_lib.run_name(name)] = config
  return out


def run_pilot(scale: str, experiment_dir: str, parallel_runs: int = 1) -> None:
  """Trains (or resumes) the pilot's runs and decodes each on the test split."""
  experiment = workdir_lib.ExperimentDir(experiment_dir)
  experiment.check_not_a_run()
  jobs = [(config, os.path.join(experiment.path, run))
          for run, config in pilot_configs(scale).items()]
  _run_jobs(jobs, parallel_runs)


def _run_jobs(jobs: Sequence[tuple[ml_collections.ConfigDict, str]], parallel_runs: int) -> None:
  """run_one on each (config, workdir), `parallel_runs` at once, each in its own process."""
  for config, _ in jobs:  # Every run's config is checked before the first trains.
    config_checks.validate(config)
  if parallel_runs > 1:
    # Built here once: runs starting together would each build the dataset and vocabulary.
    for data in {(c.dataset_name, c.data_dir, c.vocab_size): c for c, _ in jobs}.values():
      input_pipeline.prepare_vocabulary(data)
    context = multiprocessing.get_context('spawn')  # A forked JAX runtime is not safe.
    with futures.ProcessPoolExecutor(parallel_runs, mp_context=context) as pool:
      for done in [pool.submit(run_one, *job) for job in jobs]:
        done.result()
  else:
    for job in jobs:
      run_one(*job)


def run_study(scale: str, experiment_dir: str, *, seeds: int = 1,
              variants: Optional[Sequence[str]] = None, lr_grid: bool = True,
              learner: bool = True, overrides: Optional[Mapping[str, Any]] = None,
              parallel_runs: int = 1) -> str:
  """Runs every (variant, seed) and the learning-rate grid; returns the path of REPORT.md.

  With parallel_runs > 1, that many runs train at once, each in its own process: on the
  2-core CPU two runs at once give more steps an hour than one (benchmarks.concurrent_runs
  measures it), since one small step leaves cores idle between its ops.
  """
  variants = list(variants or variant_names())
  experiment = workdir_lib.ExperimentDir(experiment_dir)
  experiment.check_not_a_run()
  runs = run_configs(scale, seeds=seeds, variants=variants, lr_grid=lr_grid,
                     learner=learner, overrides=overrides)
  _run_jobs([(config, os.path.join(experiment.path, run)) for run, config in runs.items()],
            parallel_runs)
  write_test_references(runs[workdir_lib.run_name(variants[0])], experiment)
  if learner and 'baseline' in variants:
    write_learner(experiment, variants)
  return report.write_report(experiment_dir, variants=variants,
                             lr_grid=[run.split(os.sep + workdir_lib.SEED_PREFIX)[0]
                                      for run in runs if run.startswith(LR_GRID_DIR + os.sep)])


def write_test_references(config: ml_collections.ConfigDict,
                          experiment: workdir_lib.ExperimentDir) -> None:
  """The test split's English side, one line a sentence: the report's bootstrap reads it."""
  references = [en for _, en in datasets.load_pairs(config, 'test')]
  os.makedirs(experiment.path, exist_ok=True)
  with open(experiment.file(experiment.REFERENCES), 'w') as f:
    f.write(''.join(line + '\n' for line in references))


def write_learner(experiment: workdir_lib.ExperimentDir,
                  variants: Sequence[str]) -> Optional[str]:
  """learner.measure on the study's runs; None (nothing written) until the baseline is done.

  The attention is read from the finished seed-0 run (a variant's or learner/all_pairs) with
  the best test BLEU: the maps of the model that translates best.
  """
  if experiment.run('baseline').result() is None:
    return None
  bleu = {}
  for name in list(variants) + list(LEARNER_RUNS):
    result = experiment.run(name).result()
    if result is not None and result.get('bleu') is not None:  # None: the run diverged.
      bleu[name] = result['bleu']
  no_positions = experiment.run('learner/no_positions')
  return learner_lib.measure(
      experiment.path, translating=experiment.run(max(bleu, key=bleu.get)).path,
      baseline=experiment.run('baseline').path,
      no_positions=no_positions.path if no_positions.result() is not None else None)


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


def plan(scale: str, *, seeds: int = 1, variants: Optional[Sequence[str]] = None,
         lr_grid: bool = True, learner: bool = True,
         overrides: Optional[Mapping[str, Any]] = None) -> list[str]:
  """The study's runs with their budgets and the time they would take on PLAN_GPU.

  Nothing is trained. FLOPs per step are flops.train_step_flops over every row of the
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
  for run, config in run_configs(scale, seeds=seeds, variants=variants, lr_grid=lr_grid,
                                 learner=learner, overrides=overrides).items():
    config_checks.validate(config)
    per_epoch, measured = _epoch_steps(config, prepared)
    measured_all &= measured
    steps = config.num_train_steps or math.ceil(config.num_train_epochs * per_epoch)
    model_config = models.ModelConfig.from_config(config.model)
    dtype = models.resolve_dtype(config.model.dtype, 'gpu')
    rows = input_pipeline.micro_batch_rows(config) * config.grad_accum_steps
    step_flops = flops.train_step_flops(model_config, batch=rows, source_len=config.max_length,
                                        target_len=config.max_target_length)
    step_flops *= 2 if config.r_drop_alpha > 0 else 1
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
  lines.append(f'\n{source}. Hours are an estimate: FLOPs / ({gpu} {peak / 1e12:,.0f} '
               f'TFLOP/s dense bf16 x an assumed {PLAN_MFU:.0%} MFU), evaluation and decoding '
               'excluded; no GPU was used.')
  return lines
