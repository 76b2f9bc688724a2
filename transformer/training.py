"""The training loop around the pure step of steps.py: data, evaluation, checkpoints, metrics.

`train_and_evaluate` checks the workdir, prepares the data and vocabulary, restores or
initializes the state, then runs the jitted step over the data-parallel mesh, fetching
metrics every `log_every_steps`, evaluating every `eval_every_steps` and checkpointing every
`checkpoint_every_steps`. SIGTERM or Ctrl-C saves and exits; a killed run resumes exactly.
"""

import math
import os
import signal
import time
from typing import Iterable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from transformer import cli
from transformer import config_checks
from transformer import datasets
from transformer import input_pipeline
from transformer import metrics as metrics_lib
from transformer import models
from transformer import optim
from transformer import plots
from transformer import sharding
from transformer import steps as steps_lib
from transformer import translator as translator_lib
from transformer import workdir as workdir_lib


class Validation:
  """Greedy BLEU of the validation split during training."""

  def __init__(self, config: ml_collections.ConfigDict, data: input_pipeline.Data, mesh):
    pairs, tokenizer = data.validation, data.tokenizer
    if config.num_eval_bleu_sentences:
      pairs = pairs[:config.num_eval_bleu_sentences]
    self._sources = [fr for fr, _ in pairs]
    self._references = [en for _, en in pairs]
    self._translator = translator_lib.BatchTranslator(
        models.make_model(config), tokenizer, batch_size=config.eval_batch_size, mesh=mesh)
    self._search = translator_lib.SearchConfig.from_config(config, beam_size=1)

  def bleu(self, state: steps_lib.TrainState) -> dict[str, float]:
    hypotheses = self._translator.translate(steps_lib.model_variables(state), self._sources,
                                            self._search)
    scores = translator_lib.score(hypotheses, [self._references])
    return {'eval/bleu': scores['bleu'], 'eval/chrf': scores['chrf']}


def evaluate_loss(steps: steps_lib.CompiledSteps, state: steps_lib.TrainState,
                  batches: Iterable, mesh) -> dict:
  """Validation loss (unsmoothed cross-entropy per target token) and perplexity."""
  totals = None
  for batch in batches:
    out = steps.eval(state, sharding.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  loss = float(totals['loss'] / max(totals['tokens'], 1))
  return {'eval/loss': loss, 'eval/perplexity': math.exp(min(loss, 50.0))}


class _PreemptionFlag:
  """Set by SIGTERM or Ctrl-C (SIGINT), or at `stop_at` (a time.time()); the loop checks it
  between steps, saves and exits.

  A second Ctrl-C interrupts at once (KeyboardInterrupt), losing the steps since the last
  checkpoint but nothing before it.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, stop_at: Optional[float] = None):
    self._signalled = False
    self._stop_at = stop_at
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  @property
  def raised(self) -> bool:
    if not self._signalled and self._stop_at is not None and time.time() >= self._stop_at:
      logging.warning('Time is up (study.py --max_minutes): saving a checkpoint and exiting.')
      self._signalled = True
    return self._signalled

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint and exiting%s.', name,
                    ' (Ctrl-C again to stop without saving)' if signum == signal.SIGINT else '')
    self._signalled = True
    signal.signal(signal.SIGINT, signal.default_int_handler)

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def epoch_budget(config: ml_collections.ConfigDict, examples: list, *,
                 quiet: bool = False) -> tuple[int, float]:
  """(optimizer steps of the run, optimizer steps per epoch), from the measured data.

  An epoch is the train split's real target tokens (eos included, pairs that fit their rows:
  input_pipeline.Data.train). An optimizer step holds grad_accum_steps micro-batches of
  input_pipeline.micro_batch_rows rows of max_target_length target positions, of which the
  fraction input_pipeline.measured_fill holds real tokens (packing leaves row tails empty),
  so steps per epoch = split tokens / (positions per step * fill). num_train_steps, when
  > 0, wins over num_train_epochs.
  """
  split_tokens = sum(len(e['targets']) for e in examples)
  positions = (input_pipeline.micro_batch_rows(config) * config.max_target_length *
               config.grad_accum_steps)
  fill = input_pipeline.measured_fill(config, examples)
  steps_per_epoch = split_tokens / (positions * fill)
  steps = config.num_train_steps or math.ceil(config.num_train_epochs * steps_per_epoch)
  if not quiet:
    logging.info('%s: %d target tokens an epoch, %d positions a step (%.1f%% real): %.1f '
                 'steps an epoch; training %d steps (%.2f epochs).', config.dataset_name,
                 split_tokens, positions, 100 * fill, steps_per_epoch, steps,
                 steps / steps_per_epoch)
  return steps, steps_per_epoch


def _combine_micro_steps(micro: list[dict]) -> dict:
  """One optimizer step's metrics from its micro-batches' (host arrays)."""
  return {'train/loss': sum(m['train/loss'] for m in micro),  # Each is its share of the mean.
          'train/tokens': micro[0]['train/tokens'],  # The step's count, in every micro-batch.
          'train/grad_norm': micro[-1]['train/grad_norm'],  # The norm of the summed gradient.
          'train/param_norm': micro[0]['train/param_norm'],  # Before the step.
          'train/nonfinite_streak': micro[-1]['train/nonfinite_streak']}


class NonFiniteLossError(cli.UserError):
  """Too many consecutive steps with NaN/Inf loss or gradients: a designed stop."""


def _announce_scale(config: ml_collections.ConfigDict) -> None:
  """One line on what the full scale is about to do, where a CPU would take days."""
  if config.scale == 'full' and jax.default_backend() == 'cpu':
    budget = (f'{config.num_train_steps} steps' if config.num_train_steps else
              f'{config.num_train_epochs:g} epochs')
    logging.warning(
        'The full scale on a CPU: a %d+%d-layer, d_model %d Transformer on %s for %s (days '
        'here). For the CPU scale add ":small" to --config.', config.model.num_layers,
        config.model.num_layers, config.model.emb_dim, config.dataset_name, budget)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at: Optional[float] = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns last metrics.

  Nothing is written to the folder before the config is known to be valid, the folder
  writable and this run's, and the data and vocabulary prepared (workdir.Workdir): a run
  that fails at start-up leaves the folder as it was. The vocabulary is then copied in, so
  that decoding needs neither the dataset nor a network. At `stop_at` (a time.time()) the
  loop saves and returns as on SIGTERM: study.py --max_minutes.
  """
  config_checks.validate(config)  # A bad field fails here, before any work.
  run = workdir_lib.Workdir(workdir)
  run.check_before_training(config)
  _announce_scale(config)
  datasets.check_available(config)
  mesh = sharding.make_mesh()
  num_devices = mesh.devices.size
  if (rows := input_pipeline.micro_batch_rows(config)) % num_devices:
    raise cli.UserError(f'{rows} rows per micro-batch are not divisible by the '
                        f'{num_devices} devices.')
  logging.info('Training on %d devices (%d processes): %s', num_devices, jax.process_count(),
               jax.devices())

  data = input_pipeline.prepare(config, process_index=jax.process_index(),
                                process_count=jax.process_count(),
                                evaluate=bool(config.eval_every_steps))
  num_steps, steps_per_epoch = epoch_budget(config, data.train)
  config = config.copy_and_resolve_references()
  config.num_train_steps = num_steps  # The schedule decays to it; config.json records it.
  run.start(config, data.tokenizer, primary=jax.process_index() == 0)
  train_iter = input_pipeline.make_train_iterator(
      config, data.train, process_index=jax.process_index(), process_count=jax.process_count())
  accumulate = config.grad_accum_steps

  schedule = optim.make_schedule(config)
  steps = steps_lib.compile_steps(config, mesh)
  checkpointer = run.checkpointer(config.max_checkpoints_to_keep)
  state = checkpointer.restore(jax.eval_shape(steps.init), train_iter) if (
      checkpointer.latest_step() is not None) else None
  if state is None:
    state = steps.init()
  start_step = int(state.step) // accumulate  # Optimizer steps (checkpoints fall between them).
  history = [row for row in run.metrics() if row['step'] <= start_step]
  # Early stopping reads the evaluations from metrics.jsonl, so a resumed run counts on.
  bleus = [row['eval/bleu'] for row in history if 'eval/bleu' in row]
  patience_ran_out = lambda: bool(config.patience) and (
      metrics_lib.evaluations_since_best(bleus, config.patience_min_delta) >= config.patience)
  if start_step >= config.num_train_steps or patience_ran_out():
    checkpointer.close()
    return _finished(run, config, start_step, history, patience_ran_out())
  writer = run.metric_writer(resume_step=start_step, enabled=jax.process_index() == 0)
  if not any('params/count' in row for row in history):
    writer.write(0, {'params/count': sum(x.size for x in jax.tree.leaves(state.params))},
                 log=False)
  wall_seconds_before = max((row['time/wall_seconds'] for row in history
                             if 'time/wall_seconds' in row), default=0.0)
  loop_start = time.perf_counter()

  validation = Validation(config, data, mesh) if config.eval_every_steps else None
  preemption = _PreemptionFlag(stop_at)
  pending, last_metrics, step = [], {}, start_step
  window_start, window_steps = time.perf_counter(), 0
  progress = _ProgressBar(config, steps_per_epoch, start_step)

  def flush_train_metrics():
    """Fetches the steps' metrics (the loop's only regular host sync); one row a step."""
    nonlocal pending
    fetched = [_combine_micro_steps(micro) for micro in jax.device_get(pending)]
    for first_step, step_metrics in zip(range(step - len(fetched) + 1, step + 1), fetched):
      row = {k: v for k, v in step_metrics.items() if k != 'train/nonfinite_streak'}
      row['train/learning_rate'] = schedule(first_step - 1)
      row['train/epoch'] = first_step / steps_per_epoch
      writer.write(first_step, row, log=False)
      last_metrics.update(row)
    pending = []
    return fetched

  def check_nonfinite(streak: int) -> None:
    """Stops after max_nonfinite_steps NaN/Inf steps in a row, keeping the last checkpoint."""
    if streak >= config.max_nonfinite_steps:
      flush_train_metrics()
      checkpointer.wait_until_finished()
      latest = checkpointer.latest_step()
      raise NonFiniteLossError(
          f'{streak} consecutive steps had a NaN/Inf loss or gradient (limit '
          f'max_nonfinite_steps={config.max_nonfinite_steps}), the last at step {step}. '
          + (f'The last checkpoint (step {latest}) is intact in {workdir}; lower '
             '--config.learning_rate or raise --config.warmup_steps and train a new workdir.'
             if latest is not None else 'No checkpoint was saved.'))

  stopped_early = False
  previous_streak = None  # The last step's NaN/Inf streak, still on the device.
  try:
    while step < config.num_train_steps and not preemption.raised and not stopped_early:
      # The loop draws one optimizer step's micro-batches at once: a checkpoint (saved only
      # between optimizer steps) never holds a partial gradient sum.
      micro_batches = [next(train_iter) for _ in range(accumulate)]
      if accumulate > 1:
        micro_batches = input_pipeline.accumulation_group(micro_batches)
      micro_metrics = []
      for index, micro_batch in enumerate(micro_batches):
        batch = sharding.shard_batch(micro_batch, mesh)
        if (index == 0 and config.diagnostics_every_steps and
            step % config.diagnostics_every_steps == 0):
          # Labelled with the step whose batch and gradient it measures (1 = at init).
          writer.write(step + 1, jax.device_get(steps.diagnostics(state, batch)), log=False)
        state, step_metrics = steps.train(state, batch)
        micro_metrics.append(step_metrics)
      # The NaN/Inf limit is checked every step, one step behind: this step is queued, the
      # one before has finished, so reading its streak does not stall the pipeline.
      if previous_streak is not None:
        check_nonfinite(int(previous_streak))
      previous_streak = micro_metrics[-1]['train/nonfinite_streak']
      pending.append(micro_metrics)
      step += 1
      window_steps += 1
      progress.update(step)

      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        fetched = flush_train_metrics()
        elapsed = time.perf_counter() - window_start
        tokens = sum(float(m['train/tokens']) for m in fetched)
        speed = {'time/tokens_per_second': tokens / elapsed,
                 'time/steps_per_second': window_steps / elapsed,
                 'time/wall_seconds': wall_seconds_before + time.perf_counter() - loop_start}
        writer.write(step, speed, log=False)
        loss = float(np.mean([m['train/loss'] for m in fetched]))
        progress.show(loss, speed['time/tokens_per_second'])
        logging.info('step %d (epoch %.2f): loss %.4f, %.0f target tokens/s', step,
                     step / steps_per_epoch, loss, speed['time/tokens_per_second'])
        streak = int(fetched[-1]['train/nonfinite_streak'])
        if streak:
          logging.warning('Skipped %d NaN/Inf steps so far (%d in a row).',
                          int(state.nonfinite_total), streak)
        check_nonfinite(streak)
        window_start, window_steps = time.perf_counter(), 0

      if validation and (step % config.eval_every_steps == 0 or step == config.num_train_steps):
        eval_metrics = evaluate_loss(steps, state, data.eval_batches['validation'], mesh)
        # The same loss on training pairs: validation minus this is the generalization gap.
        eval_metrics['eval/train_loss'] = evaluate_loss(
            steps, state, data.eval_batches['train'], mesh)['eval/loss']
        eval_metrics.update(validation.bleu(state))
        eval_metrics['eval/nonfinite_total'] = float(state.nonfinite_total)
        writer.write(step, eval_metrics)
        last_metrics.update(eval_metrics)
        if math.isfinite(eval_metrics['eval/loss']):
          checkpointer.save_best(step, state, eval_metrics['eval/bleu'])
        window_start, window_steps = time.perf_counter(), 0
        bleus.append(eval_metrics['eval/bleu'])
        if patience_ran_out():
          logging.info('Stopping early at step %d (epoch %.2f): %d evaluations without a new '
                       'best BLEU by more than patience_min_delta (%.2f at the best).', step, step / steps_per_epoch,
                       config.patience, max(bleus))
          stopped_early = True
          last_metrics['train/stopped_early_at_step'] = step

      if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
        # Rows reach a checkpoint step only once the previous save is on disk: a folder with
        # rows two intervals in and no checkpoint has lost one (workdir._check_history).
        checkpointer.wait_until_finished()
        flush_train_metrics()  # A resumed run must find every row up to its checkpoint.
        _save_if_finite(checkpointer, step, state, train_iter)
    if (preemption.raised or stopped_early) and step > start_step:
      flush_train_metrics()
      if step % config.checkpoint_every_steps:
        _save_if_finite(checkpointer, step, state, train_iter)
      if preemption.raised:
        logging.warning('Saved step %d of %d in %s; run the same command again to resume.',
                        step, config.num_train_steps, workdir)
    if jax.process_index() == 0 and step > start_step:
      plots.plot_training_run(run.plots_dir, os.path.basename(run.path), run.metrics())
  finally:
    progress.close()
    preemption.restore()
    checkpointer.wait_until_finished()
    checkpointer.close()
    writer.close()
  return last_metrics


def _finished(run: workdir_lib.Workdir, config: ml_collections.ConfigDict, step: int,
              history: list[dict], stopped_early: bool) -> dict:
  """A run with nothing left to train: says so, writes nothing, returns its last metrics."""
  last = {}
  for row in history:
    last.update({k: v for k, v in row.items() if k != 'step'})
  if stopped_early:
    last['train/stopped_early_at_step'] = max(row['step'] for row in history
                                              if 'eval/bleu' in row)
    logging.info('%s stopped early at step %d (%d evaluations without a new best BLEU, '
                 'patience %d): nothing to do.', run.path, last['train/stopped_early_at_step'],
                 config.patience, config.patience)
  else:
    logging.info('%s is already trained to step %d of %d: nothing to do.', run.path, step,
                 config.num_train_steps)
  return last


def _save_if_finite(checkpointer, step: int, state, train_iter) -> None:
  """Saves unless a parameter is NaN/Inf: a checkpoint is never a broken model.

  A step with a NaN/Inf loss or gradient leaves the parameters as they were, but a finite
  update can still overflow them.
  """
  if not bool(_all_finite(state.params)):
    logging.warning('Step %d has NaN/Inf parameters: not saving its checkpoint.', step)
    return
  checkpointer.save(step, state, train_iter)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


class _ProgressBar:
  """tqdm over epochs (the unit a 50-epoch budget is set in), with loss, tokens/s and ETA."""

  def __init__(self, config: ml_collections.ConfigDict, steps_per_epoch: float,
               start_step: int):
    self._total_steps = config.num_train_steps
    self._per_epoch = steps_per_epoch
    self._bar = tqdm.tqdm(
        total=round(config.num_train_steps / steps_per_epoch, 2),
        initial=round(start_step / steps_per_epoch, 2), unit='epoch', dynamic_ncols=True,
        bar_format='{l_bar}{bar}| {n:.2f}/{total:.2f} epochs [{elapsed}<{remaining}{postfix}]',
        disable=jax.process_index() != 0)
    self._step, self._stats = start_step, ''

  def update(self, step: int) -> None:
    self._step = step
    self._bar.n = round(step / self._per_epoch, 2)
    self._bar.set_postfix_str(f'step {step}/{self._total_steps}{self._stats}', refresh=False)
    self._bar.update(0)

  def show(self, loss: float, tokens_per_second: float) -> None:
    self._stats = f', loss {loss:.3f}, {tokens_per_second:,.0f} target tok/s'
    self.update(self._step)

  def close(self) -> None:
    self._bar.close()
