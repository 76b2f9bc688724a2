"""Trains one experiment variant: `python train.py --config=configs/baseline.py:small --workdir=DIR`.

Any config field can be overridden on the command line (`--config.num_train_steps=500`).
Started again with the same --workdir, a run resumes from its latest checkpoint. Launched
as several processes (one per host), set --coordinator_address, --num_processes and
--process_id on every process (see README, "Several processes or hosts").
"""

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


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'Unexpected arguments: {argv[1:]}')
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.info('JAX process %d of %d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
