"""What the entry scripts share: one error path for user mistakes, and quiet library logs.

The rule (README, "Reliability"): a mistake in what the user gave (a flag, a config value, a
path, a checkpoint) is a `UserError`, raised before any work or write, and is reported as
`<script>: error: <message>` with exit status 1 and no traceback; `--verbose` shows the
traceback and the libraries' INFO logs. Anything else is a bug and keeps its traceback.
"""

import logging as std_logging
import os
import re
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

_VERBOSE = flags.DEFINE_bool(
    'verbose', False, "Show the libraries' INFO logs (orbax, grain, TFDS) and the traceback "
    'of an error.')

# Where this project's own modules live: their INFO lines are the run's log.
_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class UserError(ValueError):
  """A mistake in what the user gave; its message names the input and what to do."""


class _QuietLibraries(std_logging.Filter):
  """Keeps every warning and error, and the INFO lines of this project's own code only.

  absl routes Python logging records, whose `levelno` is Python's (INFO 20, WARNING 30), not
  absl's verbosity constants (absl.logging.WARNING is -1, INFO 0).
  """

  def filter(self, record):
    if '/orbax/' in record.pathname and 'read only' in record.getMessage().replace('_', ' '):
      return False  # "read_only=True, setting create=False": what a reader asked for.
    return (record.levelno >= std_logging.WARNING or
            (record.pathname.startswith(_PROJECT) and '/site-packages/' not in record.pathname))


class _ProjectDebug(std_logging.Filter):
  """With --verbose: this project's DEBUG lines (e.g. why a checkpoint cannot be read, in
  full), without the libraries' own."""

  def filter(self, record):
    return record.levelno >= std_logging.INFO or (
        record.pathname.startswith(_PROJECT) and '/site-packages/' not in record.pathname)


def quiet_library_logs() -> None:
  """Drops the libraries' INFO lines (orbax logs a dozen per checkpoint) unless --verbose,
  which adds the project's DEBUG lines instead."""
  if _VERBOSE.value:
    logging.set_verbosity(logging.DEBUG)
    logging.get_absl_handler().addFilter(_ProjectDebug())
  else:
    logging.get_absl_handler().addFilter(_QuietLibraries())


def log_as_in_parent(argv: Sequence[str]) -> None:
  """In a spawned process (processes.run): the parent's log format and filter.

  A spawned process starts with Python's bare logging: the project's INFO lines (a run's
  evaluations, its early stop) are dropped and every orbax warning is printed. Parsing the
  parent's flags here also gives --verbose its value.
  """
  flags.FLAGS(argv, known_only=True)
  if flags.FLAGS['verbosity'].using_default_value:  # As app.run does: INFO by default.
    flags.FLAGS.verbosity = 0
  logging.use_absl_handler()
  quiet_library_logs()


def _one_line(text: str) -> str:
  """A flag error's gist: ml_collections embeds a whole traceback; keep its last line."""
  if 'Traceback (most recent call last)' in text:
    head = re.match(r'(flag --.*?):\s', text)
    last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
    return f'{head.group(1)}: {last}' if head else last
  return ' '.join(text.split())


def fail(message: str, hint: str = '') -> None:
  """Exits with status 1 after `<script>: error: message` (and a hint line) on stderr."""
  program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'python'
  sys.stderr.write(f'{program}: error: {message}\n' + (f'{hint}\n' if hint else ''))
  sys.exit(1)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parser, every mistake reported on one or two lines as absl reports a bad value.

  Also made clear: ml_collections' bare AttributeError for an unknown config field, and a
  config file that cannot be loaded (reported by ml_collections only when first read).
  """
  try:
    rest = flags.FLAGS(argv)
    for name in flags.FLAGS:  # A config file that failed to load raises on first access.
      value = flags.FLAGS[name].value
      if type(value).__name__ == '_ErrorConfig':
        value.keys()
  except flags.Error as e:
    fail(f'Flags parsing error: {_one_line(str(e))}',
         'Pass --helpshort or --helpfull to see help on flags.')
  except AttributeError as e:
    _unknown_field(e, argv)
  except OSError as e:  # ml_collections: the config file cannot be read.
    missing = re.search(r'\[Errno \d+\] ([^\n]*)', str(e))
    fail(f'--config: {missing.group(1) if missing else _one_line(str(e))}.',
         'Give a file of configs/, e.g. --config=configs/baseline.py:small.')
  return rest


def _unknown_field(error: AttributeError, argv: Sequence[str]) -> None:
  """ml_collections' bare AttributeError for `--config.<field>`, as one line that names it."""
  name = re.search(r'\w+', str(error)).group(0)  # A repr of a repr of a KeyError.
  hint = re.search(r'Did you mean \W*(\w+)', str(error))
  culprits = [arg for arg in argv if arg.startswith('--config.') and name in arg] or argv[1:]
  fail(f'{" ".join(culprits)}: the config has no field {name!r}' +
       (f' (did you mean {hint.group(1)!r}?)' if hint else '') + '.',
       'Every field is in configs/base.py.')


def define_config_overrides(name: str, default, help_text: str):
  """config_flags.DEFINE_config_dict, whose unknown `--name.<field>` is reported as above.

  The dict flag reads its overrides from sys.argv when it is defined, at import, before
  absl parses anything: its AttributeError would otherwise be a chain of three tracebacks.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    return config_flags.DEFINE_config_dict(name, default, help_text)
  except AttributeError as e:
    _unknown_field(e, sys.argv)


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main) with parse_flags, and a UserError printed as one line (exit status 1)."""

  def guarded(argv):
    quiet_library_logs()
    try:
      main(argv)
    except UserError as e:
      if _VERBOSE.value:
        raise
      fail(str(e))
    except KeyboardInterrupt:
      if _VERBOSE.value:
        raise
      fail('interrupted (Ctrl-C).')

  app.run(guarded, flags_parser=parse_flags)
