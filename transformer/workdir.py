"""The run folder and the study's folder: the one module that knows their files.

A run folder (train.py's --workdir) holds what the run owns:

  config.json           the config it trains, and its vocabulary's fingerprint
  vocabulary.model      its sentencepiece model: decoding needs no dataset
  checkpoints/          the latest few (orbax): state and data position
  best/                 the best by validation BLEU
  corrupt_checkpoints/  unreadable checkpoints, moved aside
  metrics.jsonl         one JSON row a step
  tensorboard/, plots/  the same metrics for people
  test_result.json, test_hypotheses*.en   the study's test decoding

Anything else in the folder is the user's, and nothing here writes it. The promises of the
README's "Reliability" section live here, so every entry point keeps them by using this
module: nothing is written before every check has passed; a folder holds one experiment
(config.json is compared field by field); its history is never rewritten (metrics or a best
checkpoint that no checkpoint can resume refuse a restart); a folder that holds a run's
files without its config.json is not taken for an empty one.

Importing this module loads no JAX: orbax comes with the first checkpoint touched, so the
report reads finished runs without it.
"""

import json
import os
import shutil
import tempfile
from typing import Any, Optional

from absl import logging
import ml_collections

from transformer import cli
from transformer import config_utils
from transformer import metrics as metrics_lib
from transformer import tokenizer as tokenizer_lib

CONFIG = 'config.json'
VOCABULARY = 'vocabulary.model'
CHECKPOINTS = 'checkpoints'
BEST = 'best'
CORRUPT = 'corrupt_checkpoints'
METRICS = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'
PLOTS = 'plots'
RESULT = 'test_result.json'
# The study's translations of a split by a checkpoint: <split>_hypotheses[.<checkpoint>].en.
HYPOTHESES_SPLITS = ('test', 'validation')
HYPOTHESES_PREFIXES = tuple(f'{split}_hypotheses' for split in HYPOTHESES_SPLITS)
# What a run writes; with the hypotheses, what it owns.
OWNED = (CONFIG, VOCABULARY, CHECKPOINTS, BEST, CORRUPT, METRICS, TENSORBOARD, PLOTS, RESULT)

# config.json's record of the vocabulary: not a config field.
_VOCABULARY_KEY = 'vocabulary'
# Fields that may change between a run and its resumption: they steer the loop, the
# evaluation or where files are, not the function being trained.
RESUMABLE_FIELDS = frozenset({
    'data_dir', 'manual_dir', 'num_train_steps', 'log_every_steps', 'eval_every_steps',
    'checkpoint_every_steps', 'diagnostics_every_steps', 'max_checkpoints_to_keep',
    'max_nonfinite_steps', 'num_eval_bleu_sentences', 'eval_batch_size', 'beam_size',
    'length_penalty', 'decode_length_ratio', 'decode_length_offset',
    'num_train_epochs', 'patience', 'patience_min_delta', 'average_checkpoints',
})
# Fields added to configs/base.py after runs were trained, with the value that reproduces what
# such a run did: a folder whose config.json lacks them still resumes and decodes.
ADDED_FIELDS = {'max_train_pairs': 0, 'model.positions': 'sinusoidal', 'patience_min_delta': 0.0}
AVERAGE_PREFIX = 'average:'
# Orbax names a save in progress <step>.orbax-checkpoint-tmp*.
_TMP_MARK = '.orbax-checkpoint-tmp'
_UNREAD = object()


class Workdir:
  """One run's folder: its record, vocabulary, checkpoints, metrics and results."""

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    self._record = _UNREAD

  def __repr__(self) -> str:
    return f'Workdir({self.path!r})'

  def _file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @property
  def plots_dir(self) -> str:
    return self._file(PLOTS)

  def exists(self) -> bool:
    return os.path.isdir(self.path)

  def owns(self, path: str) -> bool:
    """Whether `path` is one of the run's own files (or inside one of its folders)."""
    relative = os.path.relpath(os.path.realpath(path), os.path.realpath(self.path))
    first = relative.split(os.sep)[0]
    return first in OWNED or first.startswith(HYPOTHESES_PREFIXES)

  # The record: config.json, read once.

  def _read_record(self) -> Optional[dict]:
    if self._record is _UNREAD:
      path = self._file(CONFIG)
      try:
        with open(path) as f:
          record = json.load(f)
      except FileNotFoundError:
        record = None
      except (OSError, ValueError) as e:
        raise cli.UserError(f'{path} cannot be read ({e}); put back the one this run was '
                            'started with, or use a new folder.') from None
      if record is not None and not isinstance(record, dict):
        raise cli.UserError(f'{path} is not a config (a JSON object); put back the one this '
                            'run was started with, or use a new folder.')
      for dotted, value in ADDED_FIELDS.items() if record else ():
        *parents, name = dotted.split('.')
        node = record
        for parent in parents:
          node = node.setdefault(parent, {})
        node.setdefault(name, value)
      self._record = record
    return self._record

  def has_config(self) -> bool:
    return self._read_record() is not None

  def config(self) -> ml_collections.ConfigDict:
    """The config the run was trained with (what decoding translates with)."""
    record = self._read_record()
    if record is None:
      raise cli.UserError(f'{self._file(CONFIG)} not found: {self.path!r} is not a training '
                          'workdir (give the --workdir train.py was given).')
    return ml_collections.ConfigDict(
        {k: v for k, v in record.items() if k != _VOCABULARY_KEY})

  def tokenizer(self) -> Optional[tokenizer_lib.Tokenizer]:
    """The run's own vocabulary, checked against config.json; None for runs that kept none."""
    recorded = (self._read_record() or {}).get(_VOCABULARY_KEY)
    if recorded is None:
      return None
    path = self._file(recorded['file'])
    if not os.path.exists(path):
      raise cli.UserError(f'{path} is missing: the vocabulary this run was trained with. '
                          "Copy it back from the run's original folder.")
    if not _same_vocabulary(path, recorded):
      raise cli.UserError(f'{path} is not the vocabulary this run was trained with (its '
                          'content differs from what config.json records).')
    return tokenizer_lib.Tokenizer.load(path)

  def vocabulary_fingerprint(self) -> Optional[str]:
    """The content fingerprint of the run's vocabulary file (None if it has none)."""
    path = self._file(VOCABULARY)
    return tokenizer_lib.fingerprint(path) if os.path.exists(path) else None

  # Checks made before anything is written.

  def check_before_training(self, config: ml_collections.ConfigDict) -> None:
    """Refuses, before any write, a folder that training would damage or mix up.

    The folder must be writable; hold this experiment (fields outside RESUMABLE_FIELDS
    equal), or nothing of a run's at all; and have a history that its checkpoints can
    resume (`_check_history`).
    """
    self._check_writable()
    record = self._read_record()
    if record is None:
      found = [name for name in OWNED if _holds_something(self._file(name))]
      if found:
        raise cli.UserError(
            f'{self.path!r} holds {", ".join(found)} but no {CONFIG}: it is not this run\'s '
            f'folder, and training would overwrite them. Put its {CONFIG} back, or give a new '
            'folder.')
      return
    old = config_utils.flatten({k: v for k, v in record.items() if k != _VOCABULARY_KEY})
    new = config_utils.flatten(config_utils.to_dict(config))
    differences = [
        f'{key}: {old.get(key, "<absent>")!r} in the workdir, {new.get(key, "<absent>")!r} now'
        for key in sorted(set(old) | set(new))
        if key not in RESUMABLE_FIELDS and old.get(key) != new.get(key)]
    if differences:
      raise cli.UserError(
          f'{self.path!r} holds a run of another experiment; resuming it with this config '
          'would mix two experiments. Use a new workdir, or the old config. Differences:\n  '
          + '\n  '.join(differences))
    self._check_history(config)

  def _check_writable(self) -> None:
    existing = self.path
    while not os.path.exists(existing):  # A new folder is made only once the data is ready.
      existing = os.path.dirname(existing)
    try:
      if not os.path.isdir(existing):
        raise NotADirectoryError(20, f'{existing} is a file')
      # A name of its own: the processes of a multi-process run probe the same folder.
      with tempfile.NamedTemporaryFile(dir=existing, prefix='.write_test') as f:
        f.write(b'\0' * 1024)
        f.flush()
    except OSError as e:
      raise cli.UserError(f'Cannot write to workdir {self.path!r}: {e.strerror}. Give a '
                          'folder you can write to.') from None

  def _check_history(self, config: ml_collections.ConfigDict) -> None:
    """Refuses a start that would rewrite what the folder records.

    Rows past every checkpoint are normal (a run killed between saves drops and retrains
    them), but rows or a best checkpoint at two checkpoint intervals or beyond mean a
    checkpoint was saved and is gone: starting over would rewrite metrics.jsonl, the plots
    and TensorBoard from step 0. A run trained past num_train_steps would have config.json
    claim fewer steps than it has (checked again once an epoch budget is resolved to steps).
    """
    recorded = max((row['step'] for row in self.metrics()), default=0)
    latest, best = self.saved_steps(CHECKPOINTS), self.saved_steps(BEST)
    trained = max(latest + best, default=0)
    if config.num_train_steps and trained > config.num_train_steps:  # 0: not resolved yet.
      raise cli.UserError(
          f'{self.path!r} is trained to step {trained}, past num_train_steps='
          f'{config.num_train_steps}: a run is not shortened. Give --config.num_train_steps='
          f'{trained} or more, or a new folder.')
    if latest:
      return
    first = self.config().checkpoint_every_steps  # The step of the run's first save.
    every = min(first, config.checkpoint_every_steps)
    if not trained and recorded <= 2 * first and self._first_save_unfinished(first):
      return  # Killed while its first save was written: nothing was ever saved to resume.
    if max(recorded, trained) >= 2 * every:
      raise cli.UserError(
          f'{self.path!r} records training up to step {max(recorded, trained)} but its '
          f'{CHECKPOINTS}/ holds none to resume from: starting over would rewrite that '
          f'history. Put the checkpoints back, or use a new folder.')

  def _first_save_unfinished(self, step: int) -> bool:
    """Whether checkpoints/ holds orbax's temporary folder of the save at `step`.

    Saves are asynchronous: training goes on while the first one is written, and the next
    save waits for it, so a run killed then has rows up to two intervals and no checkpoint,
    with nothing lost: it starts over and writes the same rows again.
    """
    folder = self._file(CHECKPOINTS)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return any(name.split('.', 1)[0] == str(step) and _TMP_MARK in name for name in names)

  # Writes: the record, checkpoints, metrics, results.

  def start(self, config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
            *, primary: bool = True) -> None:
    """Writes config.json and copies the vocabulary in (process 0, `primary`, only).

    Called after check_before_training, once the budget is resolved to steps: the history
    is checked again against it. A folder whose recorded vocabulary differs in content from
    `tokenizer`'s (the dataset's vocabulary was retrained since) is refused: its checkpoints
    hold embeddings of the old ids. The record is read afresh, since in a multi-process run
    process 0 may have written it in the meantime.
    """
    self._record = _UNREAD
    record = self._read_record()
    if record is not None:
      self._check_history(config)
      recorded = record.get(_VOCABULARY_KEY)
      if recorded is not None and not _same_vocabulary(tokenizer.model_path, recorded):
        raise cli.UserError(f'{self.path!r} was trained with another vocabulary than '
                            f'{tokenizer.model_path} (their pieces differ). Use a new workdir.')
    if not primary:
      return
    os.makedirs(self.path, exist_ok=True)
    fingerprint = tokenizer_lib.fingerprint(tokenizer.model_path)
    vocabulary = self._file(VOCABULARY)
    if not os.path.exists(vocabulary) or tokenizer_lib.fingerprint(vocabulary) != fingerprint:
      shutil.copyfile(tokenizer.model_path, vocabulary + '.tmp')
      os.replace(vocabulary + '.tmp', vocabulary)
    record = config_utils.to_dict(config)
    record[_VOCABULARY_KEY] = {'file': VOCABULARY, 'fingerprint': fingerprint}
    if record != self._read_record():  # A resumed run rewrites nothing it already holds.
      _write_json(self._file(CONFIG), record)
      self._record = _UNREAD

  def saved_steps(self, which: str = CHECKPOINTS) -> list[int]:
    """Steps saved in checkpoints/ or best/ (`which`), read without writing anything."""
    from transformer import checkpoints  # pylint: disable=g-import-not-at-top
    return checkpoints.saved_steps(self._file(which))

  def checkpointer(self, max_to_keep: int):
    """The run's checkpoints.Checkpointer: the latest `max_to_keep` and the best."""
    from transformer import checkpoints  # pylint: disable=g-import-not-at-top
    return checkpoints.Checkpointer(self._file(CHECKPOINTS), self._file(BEST),
                                    self._file(CORRUPT), max_to_keep=max_to_keep)

  def restore_variables(self, which: str, abstract_variables: dict) -> tuple[dict, int, str]:
    """(model variables, step, what was restored) for inference; no optimizer state is read.

    `which` is 'best' (falling back to the latest checkpoints when there is no best or it
    cannot be read), 'latest', a step of checkpoints/, or 'average:K', the mean of the last
    K saved checkpoints (Vaswani et al. 2017, 6.1), with the last one's step. The
    description names the checkpoint(s).
    """
    from transformer import checkpoints  # pylint: disable=g-import-not-at-top
    latest_dir = self._file(CHECKPOINTS)
    latest = self.saved_steps(CHECKPOINTS)
    if which.startswith(AVERAGE_PREFIX):
      count = check_checkpoint_choice(which)
      chosen = latest[-count:]
      if len(chosen) < count:
        raise cli.UserError(f'--checkpoint={which}: {latest_dir} holds {len(chosen)} '
                            f'checkpoints ({chosen}), fewer than {count}.')
      variables = checkpoints.average_variables(
          [checkpoints.restore_variables(latest_dir, step, abstract_variables)
           for step in chosen])
      return variables, chosen[-1], f'the mean of the checkpoints of steps {chosen}'
    check_checkpoint_choice(which)
    if which.isdigit():
      if int(which) not in latest:
        raise cli.UserError(f'--checkpoint={which}: {latest_dir} has no step {which} (it has '
                            f'{latest or "none"}).')
      candidates = [(latest_dir, int(which))]
    else:
      best = self.saved_steps(BEST)[-1:] if which == BEST else []
      candidates = ([(self._file(BEST), step) for step in best] +
                    [(latest_dir, step) for step in reversed(latest)])
      if which == BEST and not best and latest:
        logging.warning('%s has no best checkpoint (no evaluation ran); using the latest.',
                        self.path)
    if not candidates:
      raise cli.UserError(f'{self.path} has no checkpoint yet (neither {BEST}/ nor '
                          f'{CHECKPOINTS}/ holds one): train it first.')
    variables, directory, step = checkpoints.restore_first_readable(candidates,
                                                                    abstract_variables)
    kind = 'best' if directory == self._file(BEST) else 'latest'
    return variables, step, f'the {kind} checkpoint (step {step})'

  def metrics(self) -> list[dict]:
    """Every row of metrics.jsonl, in order (empty if there is none)."""
    return metrics_lib.read_rows(self._file(METRICS))

  def metric_writer(self, *, resume_step: int, enabled: bool) -> metrics_lib.MetricWriter:
    return metrics_lib.MetricWriter(self._file(METRICS), self._file(TENSORBOARD),
                                    resume_step=resume_step, enabled=enabled)

  def result(self) -> Optional[dict]:
    """test_result.json: what the study recorded of the finished run (None if unfinished)."""
    path = self._file(RESULT)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        return json.load(f)
    except ValueError as e:
      raise cli.UserError(f'{path} cannot be read ({e}); delete it to decode the run '
                          'again.') from None

  def write_result(self, result: dict) -> None:
    _write_json(self._file(RESULT), result)

  def hypotheses_path(self, checkpoint: str = BEST, split: str = 'test') -> str:
    """Where the study keeps the translations of `split` by `checkpoint` ('best', 'average:K')."""
    if split not in HYPOTHESES_SPLITS:
      raise ValueError(f'No hypotheses file for split {split!r}; one of {HYPOTHESES_SPLITS}.')
    suffix = '' if checkpoint == BEST else '.' + checkpoint.replace(':', '_')
    return self._file(f'{split}_hypotheses{suffix}.en')

  def write_hypotheses(self, checkpoint: str, lines: list[str], split: str = 'test') -> None:
    _write_atomically(self.hypotheses_path(checkpoint, split),
                      ''.join(line + '\n' for line in lines))


def check_checkpoint_choice(which: str) -> int:
  """Refuses a malformed --checkpoint before anything loads; K of 'average:K' (else 0)."""
  if which.startswith(AVERAGE_PREFIX):
    count = which[len(AVERAGE_PREFIX):]
    if not count.isdigit() or int(count) < 1:
      raise cli.UserError(f'--checkpoint={which}: expected average:K with K >= 1 checkpoints.')
    return int(count)
  if which not in (BEST, 'latest') and not which.isdigit():
    raise cli.UserError(f"--checkpoint={which}: give 'best', 'latest', a step number or "
                        "'average:K'.")
  return 0


def _holds_something(path: str) -> bool:
  """A file, a link, or a folder that is not empty: something a write could destroy."""
  return os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path))


def _same_vocabulary(path: str, recorded: dict) -> bool:
  """Whether the model at `path` is the recorded one: by content, or by bytes in old records."""
  if 'fingerprint' in recorded:
    return tokenizer_lib.fingerprint(path) == recorded['fingerprint']
  return tokenizer_lib.file_sha256(path) == recorded['sha256']


def _write_json(path: str, value: Any) -> None:
  _write_atomically(path, json.dumps(value, indent=2, sort_keys=True))


def _write_atomically(path: str, text: str) -> None:
  """By rename, so that a kill mid-write leaves the old file or the new, never half of one."""
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


SEED_PREFIX = 'seed_'


def run_name(name: str, seed: int = 0) -> str:
  """'<name>/seed_<n>': where a study keeps the run of `name` at `seed`, in its folder."""
  return os.path.join(name, f'{SEED_PREFIX}{seed}')


class ExperimentDir:
  """A study's folder: a run folder per `<run>/seed_<n>`, the report and what it reads."""

  REPORT = 'REPORT.md'
  REFERENCES = 'test_references.en'
  VALIDATION_REFERENCES = 'validation_references.en'
  SPEED = 'speed.json'  # benchmarks.variant_speed: steps/s of each variant measured alone.
  RETRAINS = 'retrains.json'  # Every run trained again, and why (the report lists them).
  PLOTS = 'plots'
  LEARNER = 'learner'
  LEARNER_RESULT = 'measurements.json'
  LEARNER_ATTENTION = 'attention'
  LEARNER_MEMORY_PLOT = 'memory_by_length.png'

  def __init__(self, path: str):
    self.path = os.path.abspath(path)

  def file(self, *names: str) -> str:
    """A path under the folder: `file(REPORT)`, `file(LEARNER, LEARNER_RESULT)`."""
    return os.path.join(self.path, *names)

  def run(self, name: str, seed: int = 0) -> Workdir:
    """The run folder of `name` (a variant, 'learner/<x>' or 'lr_grid/<x>') at `seed`."""
    return Workdir(os.path.join(self.path, run_name(name, seed)))

  def seeds(self, name: str) -> list[tuple[int, Workdir]]:
    """(seed, run folder) of every seed of `name` present, in seed order."""
    folder = os.path.join(self.path, name)
    found = []
    if os.path.isdir(folder):
      for entry in os.listdir(folder):
        if entry.startswith(SEED_PREFIX) and entry[len(SEED_PREFIX):].isdigit():
          found.append((int(entry[len(SEED_PREFIX):]), Workdir(os.path.join(folder, entry))))
    return sorted(found, key=lambda pair: pair[0])

  def check_not_a_run(self) -> None:
    """Refuses a run folder given as a study's folder: the study would write into it."""
    if os.path.exists(os.path.join(self.path, CONFIG)):
      raise cli.UserError(f'--experiment_dir={self.path} holds {CONFIG}: it is a run folder, '
                          'not a study\'s. Give a new or a study\'s folder.')
