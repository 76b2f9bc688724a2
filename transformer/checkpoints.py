"""Checkpoints with orbax: the latest few for resuming, and the best by validation BLEU.

A checkpoint holds the whole `TrainState` (params, optimizer state, step, RNG, NaN counters)
and the grain iterator's state, saved at the same step, so a resumed run sees the same
batches as an unbroken one. The config a workdir was started with is kept beside them in
`config.json`; resuming with a config that trains a different function is an error that names
the fields, instead of an orbax shape error or, worse, a silent mismatch.
"""

import contextlib
import gc
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from typing import Any, Optional

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from transformer import cli
from transformer import config_utils

CONFIG_FILE = 'config.json'

# Fields that may change between a run and its resumption: they steer the loop, the
# evaluation or where files are, not the function being trained.
RESUMABLE_FIELDS = frozenset({
    'data_dir', 'manual_dir', 'num_train_steps', 'log_every_steps', 'eval_every_steps',
    'checkpoint_every_steps', 'diagnostics_every_steps', 'max_checkpoints_to_keep',
    'max_nonfinite_steps', 'num_eval_bleu_sentences', 'eval_batch_size', 'beam_size',
    'length_penalty', 'decode_length_ratio', 'decode_length_offset',
    'num_train_epochs', 'patience', 'average_checkpoints',
})


# Fields added to configs/base.py after runs were trained, with the value that reproduces what
# such a run did: a workdir whose config.json lacks them still resumes and decodes.
ADDED_FIELDS = {'max_train_pairs': 0, 'model.positions': 'sinusoidal'}

VOCABULARY_FILE = 'vocabulary.model'
# config.json's record of the workdir's vocabulary; not a config field.
VOCABULARY_KEY = 'vocabulary'


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _read_config_file(workdir: str) -> Optional[dict]:
  """config.json as a dict, with ADDED_FIELDS filled in where it predates them."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    recorded = json.load(f)
  for dotted, value in ADDED_FIELDS.items():
    *parents, name = dotted.split('.')
    node = recorded
    for parent in parents:
      node = node.setdefault(parent, {})
    node.setdefault(name, value)
  return recorded


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (what decode.py translates with)."""
  recorded = _read_config_file(workdir)
  if recorded is None:
    raise cli.UserError(f'{os.path.join(workdir, CONFIG_FILE)} not found: {workdir!r} is not '
                        'a training workdir (give the --workdir train.py was given).')
  recorded.pop(VOCABULARY_KEY, None)
  return ml_collections.ConfigDict(recorded)


def vocabulary_path(workdir: str) -> Optional[str]:
  """The workdir's own copy of its sentencepiece model, checked against config.json's hash.

  None for a workdir trained before the vocabulary travelled with it.
  """
  recorded = (_read_config_file(workdir) or {}).get(VOCABULARY_KEY)
  if recorded is None:
    return None
  path = os.path.join(workdir, recorded['file'])
  if not os.path.exists(path):
    raise cli.UserError(f'{path} is missing: the vocabulary this run was trained with. '
                            'Copy it back from the run\'s original workdir.')
  if (found := _sha256(path)) != recorded['sha256']:
    raise cli.UserError(f'{path} has SHA-256 {found[:12]}..., config.json records '
                     f"{recorded['sha256'][:12]}...: not the vocabulary this run was trained with.")
  return path


def saved_steps(workdir: str, which: str = 'checkpoints') -> list[int]:
  """Steps saved in `workdir/which` ('checkpoints' or 'best'), read without writing anything.

  The manager is this process's alone (orbax's active_processes): whether the folder exists
  yet depends on how far process 0 has got, so a manager of all processes would meet them at
  a barrier some never reach.
  """
  directory = os.path.join(os.path.abspath(workdir), which)
  if not os.path.isdir(directory):
    return []
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, multiprocessing_options=alone)) as manager:
    return sorted(manager.all_steps())


def check_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Fails if `workdir` holds a run of another experiment (fields outside RESUMABLE_FIELDS).

  A workdir with checkpoints or metrics but no config.json (deleted, or copied without it)
  is refused too: nothing says which experiment they belong to.
  """
  try:
    old = _read_config_file(workdir)
  except (OSError, json.JSONDecodeError) as e:
    raise cli.UserError(f'{os.path.join(workdir, CONFIG_FILE)} cannot be read ({e}); put back '
                        'the one this run was started with, or use a new --workdir.') from None
  if old is None:
    found = [name for name in ('checkpoints', 'best', 'metrics.jsonl')
             if os.path.exists(os.path.join(workdir, name)) and (
                 name == 'metrics.jsonl' or saved_steps(workdir, name))]
    if found:
      raise cli.UserError(
          f'{workdir!r} holds {" and ".join(found)} but no {CONFIG_FILE}: nothing says which '
          f'experiment they are. Put its {CONFIG_FILE} back, or use a new --workdir.')
    return
  old.pop(VOCABULARY_KEY, None)
  old_flat, new_flat = config_utils.flatten(old), config_utils.flatten(config_utils.to_dict(config))
  differences = [
      f'{key}: {old_flat.get(key, "<absent>")!r} in the workdir, {new_flat.get(key, "<absent>")!r} now'
      for key in sorted(set(old_flat) | set(new_flat))
      if key not in RESUMABLE_FIELDS and old_flat.get(key) != new_flat.get(key)]
  if differences:
    raise cli.UserError(
        f'{workdir!r} holds a run of another experiment; resuming it with this config would '
        'mix two experiments. Use a new --workdir, or the old config. Differences:\n  '
        + '\n  '.join(differences))


def save_config(workdir: str, config: ml_collections.ConfigDict, tokenizer) -> None:
  """Writes config.json and copies the vocabulary beside it (process 0 only).

  A workdir whose recorded vocabulary differs from `tokenizer`'s (the dataset's vocabulary was
  retrained since) is refused: its checkpoints hold embeddings of the old ids.
  """
  old_record = (_read_config_file(workdir) or {}).get(VOCABULARY_KEY)
  sha = _sha256(tokenizer.model_path)
  if old_record is not None and old_record['sha256'] != sha:
    raise cli.UserError(f'{workdir!r} was trained with another vocabulary than '
                     f'{tokenizer.model_path} (SHA-256 {old_record["sha256"][:12]}... vs '
                     f'{sha[:12]}...). Use a new --workdir.')
  if jax.process_index() != 0:
    return
  vocabulary = os.path.join(workdir, VOCABULARY_FILE)
  if not os.path.exists(vocabulary) or _sha256(vocabulary) != sha:
    shutil.copyfile(tokenizer.model_path, vocabulary + '.tmp')
    os.replace(vocabulary + '.tmp', vocabulary)
  record = config_utils.to_dict(config)
  record[VOCABULARY_KEY] = {'file': VOCABULARY_FILE, 'sha256': sha}
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def _gist(error: Exception) -> str:
  """An error on one line, short enough for a log: tensorstore's run to kilobytes."""
  text = ' '.join(str(error).split()).split(' [tensorstore_spec')[0]
  text = f'{type(error).__name__}: {text}'
  return text if len(text) <= 400 else f'{text[:150]} ... {text[-250:]}'


@contextlib.contextmanager
def _abandoned_reads_dropped():
  """Silences the coroutines a failed orbax restore leaves behind, counting them in one line.

  Each of the failed checkpoint's pending tensorstore reads is collected unawaited and Python
  prints "Exception ignored in: <coroutine ...>" for it: thousands of lines for one checkpoint.
  """
  dropped, previous = 0, sys.unraisablehook

  def hook(unraisable):
    nonlocal dropped
    if inspect.iscoroutine(unraisable.object):
      dropped += 1
    else:
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous
    if dropped:
      logging.info('Dropped %d abandoned reads of the failed restore.', dropped)


class Checkpointer:
  """The latest checkpoints (with data state) and the best one by validation BLEU."""

  def __init__(self, workdir: str, *, max_to_keep: int):
    workdir = os.path.abspath(workdir)
    self._directory = os.path.join(workdir, 'checkpoints')
    self._latest = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True),
        item_names=('state', 'data'),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})
    self._best = ocp.CheckpointManager(
        os.path.join(workdir, 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics['bleu'], best_mode='max', create=True),
        item_names=('state',))

  def latest_step(self) -> Optional[int]:
    return self._latest.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    self._latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)))

  def save_best(self, step: int, state: Any, bleu: float) -> None:
    self._best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                    metrics={'bleu': float(bleu)})

  def restore(self, abstract_state: Any, data_iterator: Any) -> Any:
    """Restores the newest readable state (and the iterator, in place); None if there is none.

    A checkpoint that fails to restore (a file truncated, or lost with a disk) is skipped
    with a warning and the one before it is used: the run loses the steps since then instead
    of not starting. Skipped ones are moved to `corrupt_checkpoints/`, which frees their step
    numbers for new saves. If none restores, nothing is moved and the error names them all:
    then the cause is more likely the code than the files.
    """
    failures = []
    for step in sorted(self._latest.all_steps(), reverse=True):
      try:
        with _abandoned_reads_dropped():
          restored = self._latest.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=grain.checkpoint.CheckpointRestore(data_iterator)))
      except Exception as e:  # pylint: disable=broad-exception-caught
        failures.append((step, _gist(e)))
        logging.warning('The checkpoint of step %d cannot be restored (%s); trying the one '
                        'before.', step, failures[-1][1])
        continue
      for bad_step, _ in failures:
        self._set_aside(bad_step)
      logging.info('Resumed from the checkpoint of step %d.', step)
      return restored.state
    if failures:
      raise RuntimeError(f'No checkpoint in {self._directory} can be restored:\n  ' +
                         '\n  '.join(f'step {step}: {why}' for step, why in failures))
    return None

  def _set_aside(self, step: int) -> None:
    """Moves an unreadable checkpoint out of the manager's way, keeping it for inspection."""
    corrupt = os.path.join(os.path.dirname(self._directory), 'corrupt_checkpoints', str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(corrupt), exist_ok=True)
      if os.path.exists(corrupt):
        corrupt += f'.{time.time_ns()}'
      os.replace(os.path.join(self._directory, str(step)), corrupt)
      logging.warning('Moved the unreadable checkpoint of step %d to %s.', step, corrupt)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'set_aside_checkpoint_{step}')
    self._latest.reload()

  def wait_until_finished(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


AVERAGE_PREFIX = 'average:'


def average_states(states: list[Any]) -> Any:
  """The states' element-wise mean of params and BatchNorm statistics, in float32.

  The rest (step, optimizer state, RNG, counters) is the last state's: only what the model
  computes with is averaged. Averaging the running mean and variance along with the weights
  keeps BatchNorm's statistics those of (nearly) the same network.
  """
  mean = lambda *leaves: sum(leaf.astype(jax.numpy.float32) for leaf in leaves) / len(leaves)
  return states[-1].replace(
      params=jax.tree.map(mean, *[s.params for s in states]),
      batch_stats=jax.tree.map(mean, *[s.batch_stats for s in states]))


def _restore_average(workdir: str, which: str, abstract_state: Any) -> tuple[Any, int]:
  """'average:K': the mean of the last K checkpoints in checkpoints/ (Vaswani et al. 2017, 6.1)."""
  try:
    count = int(which[len(AVERAGE_PREFIX):])
  except ValueError:
    count = 0
  if count < 1:
    raise cli.UserError(f'--checkpoint={which}: expected average:K with K >= 1 checkpoints.')
  directory = os.path.join(workdir, 'checkpoints')
  with ocp.CheckpointManager(directory, item_names=('state',),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    chosen = sorted(manager.all_steps())[-count:]
    if len(chosen) < count:
      raise cli.UserError(f'--checkpoint={which}: {directory} holds {len(chosen)} checkpoints '
                          f'({chosen}), fewer than {count}.')
    states = [manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state))).state for step in chosen]
  logging.info('Averaged the checkpoints of steps %s.', chosen)
  return average_states(states), chosen[-1]


def restore_params(workdir: str, which: str, abstract_state: Any) -> tuple[Any, int]:
  """Restores a state for inference: `which` is 'best', 'latest', a step or 'average:K'.

  'average:K' is the mean of the last K saved checkpoints' parameters (and BatchNorm
  statistics), with the last one's step.

  As in training, a checkpoint that cannot be read is skipped with a one-line warning:
  'best' falls back to the latest checkpoints, 'latest' to the ones before it. Nothing is
  moved (decoding writes nothing into the workdir). A step number is that step or an error.
  """
  workdir = os.path.abspath(workdir)
  if which.startswith(AVERAGE_PREFIX):
    return _restore_average(workdir, which, abstract_state)
  best, latest = saved_steps(workdir, 'best'), saved_steps(workdir, 'checkpoints')
  if which not in ('best', 'latest'):
    if not which.isdigit():
      raise cli.UserError(f"--checkpoint={which}: give 'best', 'latest' or a step number.")
    if int(which) not in latest:
      raise cli.UserError(f'--checkpoint={which}: {workdir}/checkpoints has no step {which} '
                          f'(it has {latest or "none"}).')
    candidates = [('checkpoints', int(which))]
  else:
    if which == 'best' and not best:
      # A run trained with eval_every_steps=0 never scored one: its last state is its best.
      logging.warning('%s has no best checkpoint (no evaluation ran); using the latest.', workdir)
    candidates = ([('best', step) for step in best[-1:]] if which == 'best' else []) + [
        ('checkpoints', step) for step in reversed(latest)]
  if not candidates:
    raise cli.UserError(f'{workdir} has no checkpoint yet (neither best/ nor checkpoints/ '
                        'holds one): train it first.')
  failures = []
  for folder, step in candidates:
    try:
      with _abandoned_reads_dropped(), ocp.CheckpointManager(
          os.path.join(workdir, folder), item_names=('state',),
          options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # pylint: disable=broad-exception-caught
      failures.append(f'{folder}/{step}: {_gist(e)}')
      logging.warning('The checkpoint %s/%d cannot be restored (%s); trying the one before.',
                      folder, step, _gist(e))
      continue
    return restored.state, step
  raise RuntimeError(f'No checkpoint of {workdir} can be restored:\n  ' + '\n  '.join(failures))
