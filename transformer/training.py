"""The training loop around the pure step of steps.py: data, evaluation, checkpoints, metrics.

`train_and_evaluate` checks the workdir, prepares the data and vocabulary, restores or
initializes the state, then runs the jitted step over the data-parallel mesh, fetching
metrics every `log_every_steps`, evaluating every `eval_every_steps` and checkpointing every
`checkpoint_every_steps`. SIGTERM or Ctrl-C saves and exits; a killed run resumes exactly.
"""

import math
import os
import signal
import tempfile
import time
from typing import Iterator

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from transformer import checkpoints
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


class Validation:
  """Greedy BLEU of the validation split during training."""

  def __init__(self, config: ml_collections.ConfigDict, tokenizer, mesh):
    pairs = input_pipeline.load_pairs(config, 'validation')
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
                  batches: Iterator, mesh) -> dict:
  """Validation loss (unsmoothed cross-entropy per target token) and perplexity."""
  totals = None
  for batch in batches:
    out = steps.eval(state, sharding.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  loss = float(totals['loss'] / max(totals['tokens'], 1))
  return {'eval/loss': loss, 'eval/perplexity': math.exp(min(loss, 50.0))}


class _PreemptionFlag:
  """Set by SIGTERM or Ctrl-C (SIGINT); the loop checks it between steps, saves and exits.

  A second Ctrl-C interrupts at once (KeyboardInterrupt), losing the steps since the last
  checkpoint but nothing before it.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.raised = False
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint and exiting%s.', name,
                    ' (Ctrl-C again to stop without saving)' if signum == signal.SIGINT else '')
    self.raised = True
    signal.signal(signal.SIGINT, signal.default_int_handler)

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def epoch_budget(config: ml_collections.ConfigDict, examples: list) -> tuple[int, float]:
  """(optimizer steps of the run, optimizer steps per epoch), from the measured data.

  An epoch is the train split's real target tokens (eos included, pairs that fit their rows:
  input_pipeline.train_examples). An optimizer step holds grad_accum_steps micro-batches of
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
  logging.info('%s: %d target tokens an epoch, %d positions a step (%.1f%% real): %.1f steps '
               'an epoch; training %d steps (%.2f epochs).', config.dataset_name, split_tokens,
               positions, 100 * fill, steps_per_epoch, steps, steps / steps_per_epoch)
  return steps, steps_per_epoch


def evaluations_since_best(bleus: list[float]) -> int:
  """Evaluations after the first one with the highest BLEU (0 if the last is the best)."""
  if not bleus:
    return 0
  return len(bleus) - 1 - bleus.index(max(bleus))


def _combine_micro_steps(micro: list[dict]) -> dict:
  """One optimizer step's metrics from its micro-batches' (host arrays)."""
  return {'train/loss': sum(m['train/loss'] for m in micro),  # Each is its share of the mean.
          'train/tokens': micro[0]['train/tokens'],  # The step's count, in every micro-batch.
          'train/grad_norm': micro[-1]['train/grad_norm'],  # The norm of the summed gradient.
          'train/param_norm': micro[0]['train/param_norm'],  # Before the step.
          'train/nonfinite_streak': micro[-1]['train/nonfinite_streak']}


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps with NaN/Inf loss or gradients."""


def _check_workdir(workdir: str) -> None:
  """Fails before any work if the workdir cannot hold checkpoints; creates nothing."""
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):  # A new workdir is made only once the data is ready.
    existing = os.path.dirname(existing)
  try:
    if not os.path.isdir(existing):
      raise NotADirectoryError(20, f'{existing} is a file')
    # A name of its own: the processes of a multi-process run probe the same folder.
    with tempfile.NamedTemporaryFile(dir=existing, prefix='.write_test') as f:
      f.write(b'\0' * 1024)
      f.flush()
  except OSError as e:
    raise cli.UserError(f'Cannot write to workdir {workdir!r}: {e.strerror}. Give a folder '
                        'you can write to as --workdir.') from None


def _check_history(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a start that would rewrite what the workdir records (README, "Reliability").

  Rows past every checkpoint are normal (a run killed between saves drops and retrains them),
  but rows or a best checkpoint beyond two checkpoint intervals mean a checkpoint was saved and
  is gone: starting over would rewrite metrics.jsonl, the plots and TensorBoard from step 0.
  A workdir trained past num_train_steps would have config.json claim fewer steps than it has
  (checked again once an epoch budget is resolved to steps).
  """
  recorded = metrics_lib.last_step(workdir)  # A malformed row fails here, before any write.
  latest = checkpoints.saved_steps(workdir, 'checkpoints')
  best = checkpoints.saved_steps(workdir, 'best')
  trained = max(latest + best, default=0)
  if config.num_train_steps and trained > config.num_train_steps:  # 0: not resolved yet.
    raise cli.UserError(
        f'{workdir!r} is trained to step {trained}, past num_train_steps='
        f'{config.num_train_steps}: a run is not shortened. Give --config.num_train_steps='
        f'{trained} or more, or a new --workdir.')
  if latest:
    return
  try:
    every = checkpoints.load_config(workdir).checkpoint_every_steps
  except cli.UserError:  # No config.json: check_config has refused any history already.
    every = config.checkpoint_every_steps
  if max(recorded, trained) > 2 * min(every, config.checkpoint_every_steps):
    raise cli.UserError(
        f'{workdir!r} records training up to step {max(recorded, trained)} but its '
        'checkpoints/ holds none to resume from: starting over would rewrite that history. '
        'Put the checkpoints back, or use a new --workdir.')


def _announce_scale(config: ml_collections.ConfigDict) -> None:
  """One line on what the full scale is about to do, where a CPU would take days."""
  if config.scale == 'full' and jax.default_backend() == 'cpu':
    budget = (f'{config.num_train_steps} steps' if config.num_train_steps else
              f'{config.num_train_epochs:g} epochs')
    logging.warning(
        'The full scale on a CPU: a %d+%d-layer, d_model %d Transformer on %s for %s (days '
        'here). For the CPU scale add ":small" to --config.', config.model.num_layers,
        config.model.num_layers, config.model.emb_dim, config.dataset_name, budget)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns last metrics.

  Nothing is written to the workdir before the config is known to be valid, the workdir
  writable and the data and vocabulary prepared: a run that fails at start-up leaves the
  workdir as it was. The vocabulary is then copied into the workdir (its hash recorded in
  config.json), so that decoding needs neither the dataset nor a network.
  """
  config_checks.validate(config)  # A bad field fails here, before any work.
  _check_workdir(workdir)
  checkpoints.check_config(workdir, config)
  _check_history(workdir, config)
  _announce_scale(config)
  datasets.check_available(config)
  mesh = sharding.make_mesh()
  num_devices = mesh.devices.size
  if (rows := input_pipeline.micro_batch_rows(config)) % num_devices:
    raise cli.UserError(f'{rows} rows per micro-batch are not divisible by the '
                     f'{num_devices} devices.')
  logging.info('Training on %d devices (%d processes): %s', num_devices, jax.process_count(),
               jax.devices())

  tokenizer = input_pipeline.prepare(config)
  examples = input_pipeline.train_examples(config, tokenizer)
  num_steps, steps_per_epoch = epoch_budget(config, examples)
  config = config.copy_and_resolve_references()
  config.num_train_steps = num_steps  # The schedule decays to it; config.json records it.
  _check_history(workdir, config)
  os.makedirs(workdir, exist_ok=True)
  checkpoints.save_config(workdir, config, tokenizer)
  train_iter = input_pipeline.make_train_iterator(
      config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count(),
      examples=examples)
  accumulate = config.grad_accum_steps

  schedule = optim.make_schedule(config)
  steps = steps_lib.compile_steps(config, mesh)
  checkpointer = checkpoints.Checkpointer(workdir, max_to_keep=config.max_checkpoints_to_keep)
  state = checkpointer.restore(jax.eval_shape(steps.init), train_iter) if (
      checkpointer.latest_step() is not None) else None
  if state is None:
    state = steps.init()
  start_step = int(state.step) // accumulate  # Optimizer steps (checkpoints fall between them).
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step,
                                    enabled=jax.process_index() == 0)
  if not any('params/count' in row for row in metrics_lib.read_metrics(workdir)):
    writer.write(0, {'params/count': sum(x.size for x in jax.tree.leaves(state.params))})
  history = [row for row in metrics_lib.read_metrics(workdir) if row['step'] <= start_step]
  wall_seconds_before = max((row['time/wall_seconds'] for row in history
                             if 'time/wall_seconds' in row), default=0.0)
  # Early stopping reads the evaluations from metrics.jsonl, so a resumed run counts on.
  bleus = [row['eval/bleu'] for row in history if 'eval/bleu' in row]
  patience_ran_out = lambda: bool(config.patience) and (
      evaluations_since_best(bleus) >= config.patience)
  loop_start = time.perf_counter()

  validation = Validation(config, tokenizer, mesh) if config.eval_every_steps else None
  preemption = _PreemptionFlag()
  pending, last_metrics, step = [], {}, start_step
  window_start, window_steps = time.perf_counter(), 0

  def flush_train_metrics():
    """Fetches the steps' metrics (the loop's only host sync) and writes one row a step."""
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

  # The bar counts epochs (steps in its postfix), the unit a 50-epoch budget is set in.
  progress = tqdm.tqdm(total=round(config.num_train_steps / steps_per_epoch, 2),
                       initial=round(start_step / steps_per_epoch, 2), unit='epoch',
                       bar_format='{l_bar}{bar}| {n:.2f}/{total:.2f} epochs [{elapsed}<'
                       '{remaining}{postfix}]', dynamic_ncols=True,
                       disable=jax.process_index() != 0)
  stopped_early = patience_ran_out()
  if stopped_early:
    logging.info('%d evaluations without a new best BLEU (patience %d): not training on.',
                 evaluations_since_best(bleus), config.patience)
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
      pending.append(micro_metrics)
      step += 1
      window_steps += 1
      progress.n = round(step / steps_per_epoch, 2)
      progress.set_postfix_str(f'step {step}/{config.num_train_steps}', refresh=False)
      progress.update(0)

      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        fetched = flush_train_metrics()
        elapsed = time.perf_counter() - window_start
        tokens = sum(float(m['train/tokens']) for m in fetched)
        speed = {'time/tokens_per_second': tokens / elapsed,
                 'time/steps_per_second': window_steps / elapsed,
                 'time/wall_seconds': wall_seconds_before + time.perf_counter() - loop_start}
        writer.write(step, speed, log=False)
        loss = float(np.mean([m['train/loss'] for m in fetched]))
        logging.info('step %d (epoch %.2f): loss %.4f, %.0f target tokens/s', step,
                     step / steps_per_epoch, loss, speed['time/tokens_per_second'])
        streak = max(int(m['train/nonfinite_streak']) for m in fetched)
        if streak:
          logging.warning('Skipped %d NaN/Inf steps so far (%d in a row).',
                          int(state.nonfinite_total), streak)
        if streak >= config.max_nonfinite_steps:
          checkpointer.wait_until_finished()
          raise NonFiniteLossError(
              f'{streak} consecutive steps had a NaN/Inf loss or gradient (limit '
              f'max_nonfinite_steps={config.max_nonfinite_steps}); stopping. The last good '
              f'checkpoint (step {checkpointer.latest_step()}) is intact in {workdir}.')
        window_start, window_steps = time.perf_counter(), 0

      if validation and (step % config.eval_every_steps == 0 or step == config.num_train_steps):
        eval_metrics = evaluate_loss(steps, state, input_pipeline.make_eval_iterator(
            config, tokenizer, 'validation', process_index=jax.process_index(),
            process_count=jax.process_count()), mesh)
        # The same loss on training pairs: validation minus this is the generalization gap.
        eval_metrics['eval/train_loss'] = evaluate_loss(
            steps, state, input_pipeline.make_eval_iterator(
                config, tokenizer, 'train', process_index=jax.process_index(),
                process_count=jax.process_count()), mesh)['eval/loss']
        eval_metrics.update(validation.bleu(state))
        eval_metrics['eval/nonfinite_total'] = float(state.nonfinite_total)
        writer.write(step, eval_metrics)
        last_metrics.update(eval_metrics)
        checkpointer.save_best(step, state, eval_metrics['eval/bleu'])
        window_start, window_steps = time.perf_counter(), 0
        bleus.append(eval_metrics['eval/bleu'])
        if patience_ran_out():
          logging.info('Stopping early at step %d (epoch %.2f): %d evaluations without a new '
                       'best BLEU (%.2f at the best).', step, step / steps_per_epoch,
                       config.patience, max(bleus))
          stopped_early = True
          last_metrics['train/stopped_early_at_step'] = step

      if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
        flush_train_metrics()  # A resumed run must find every row up to its checkpoint.
        checkpointer.save(step, state, train_iter)
    if (preemption.raised or stopped_early) and step > start_step:
      flush_train_metrics()
      if step % config.checkpoint_every_steps:
        checkpointer.save(step, state, train_iter)
      logging.warning('Saved step %d of %d in %s; run the same command again to resume.',
                      step, config.num_train_steps, workdir)
    if jax.process_index() == 0:
      plots.plot_training_run(workdir, metrics_lib.read_metrics(workdir))
  finally:
    progress.close()
    preemption.restore()
    checkpointer.wait_until_finished()
    checkpointer.close()
    writer.close()
  return last_metrics
