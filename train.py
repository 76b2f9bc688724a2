"""Trains one experiment variant: `python train.py --config=configs/baseline.py:small --workdir=DIR`.

Any config field can be overridden on the command line (`--config.num_train_steps=500`).
Started again with the same --workdir, a run resumes from its latest checkpoint. Launched
as several processes (one per host), set --coordinator_address, --num_processes and
--process_id on every process (see README, "Several processes or hosts").
"""

import re

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from transformer import cli
from transformer import training

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and logs go here.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-process training.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in a multi-process run.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with ml_collections' bare AttributeError for an unknown field made clear."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:
    name = re.search(r'\w+', str(e)).group(0)  # str(e) is a repr of a repr of a KeyError.
    hint = re.search(r'Did you mean \W*(\w+)', str(e))
    culprits = [arg for arg in argv if arg.startswith('--config.') and name in arg] or argv[1:]
    raise SystemExit(f'FATAL Flags parsing error: {" ".join(culprits)}: the config has no field '
                     f'{name!r}' + (f' (did you mean {hint.group(1)!r}?)' if hint else '') +
                     '. Every field is in configs/base.py.') from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.info('JAX process %d of %d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
