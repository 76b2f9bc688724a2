r"""Peak memory of decoding a Transformer-base run folder: parameters only vs the whole state.

  python -m benchmarks.decode_memory [--runs=2] [--sentences=16]

Makes a run folder of Transformer-base (configs/baseline.py: 52 M parameters, 16k joint
vocabulary) on the embedded Bible, with one checkpoint of a training state (random
parameters and dense Adam moments, as training saves them), then decodes the same test
sentences in fresh processes two ways, one after the other:

  params only   decode.py, which restores the parameters alone (orbax partial restore)
  whole state   the whole TrainState restored, as decode.py did before, then the same search

and prints each process's peak resident memory (VmHWM, Linux), `--runs` times each, with the
machine; also of processes that only load (the same two ways), which isolates what the
restore holds from what compiling and running the search takes. Memory does not depend on
the weights' values, but it does on whether pages are written, hence dense moments.
"""

import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

from benchmarks import machine

_RUNS = flags.DEFINE_integer('runs', 2, 'Processes of each kind (interleaved).', lower_bound=1)
_SENTENCES = flags.DEFINE_integer('sentences', 16, 'Test sentences decoded.', lower_bound=1)
_FOLDER = flags.DEFINE_string('folder', None, 'Where the run folder goes (default: a temporary '
                              'one, removed afterwards).')

# Runs a script as __main__ and writes its peak resident memory (KiB) to the file in $PEAK:
# Linux's VmHWM, this program's own high-water mark (ru_maxrss would start from the parent's
# at the fork, which here holds a Transformer-base of its own).
_MEASURED = r"""
import atexit, os, runpy, sys
def peak():
  for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
      open(os.environ['PEAK'], 'w').write(line.split()[1])
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""
# What decode.py did before it read parameters only: restore the whole TrainState (Adam's
# moments included), then the same search over the same sentences.
_WHOLE_STATE = r"""
import sys
import jax
import orbax.checkpoint as ocp
from transformer import inference, steps, translator, workdir
run = workdir.Workdir(sys.argv[1])
config = run.config()
with ocp.CheckpointManager(run.path + '/' + workdir.CHECKPOINTS, item_names=('state',),
                           options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
  state = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(steps.abstract_state(config)))).state
variables = steps.model_variables(state)
if len(sys.argv) < 3:
  sys.exit(0)  # Loading only.
lines = open(sys.argv[2], encoding='utf-8').read().splitlines()
search = inference.search_config(config)
batch = translator.BatchTranslator(inference.models.make_model(config), run.tokenizer(),
                                   batch_size=config.eval_batch_size)
print('\n'.join(batch.translate(variables, lines, search)))
"""


def _make_run_folder(folder: str) -> tuple[str, str]:
  """A Transformer-base run folder with one checkpoint of its initial state; the source file."""
  import grain  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  from transformer import datasets  # pylint: disable=g-import-not-at-top
  from transformer import input_pipeline  # pylint: disable=g-import-not-at-top
  from transformer import sharding  # pylint: disable=g-import-not-at-top
  from transformer import steps  # pylint: disable=g-import-not-at-top
  from transformer import workdir  # pylint: disable=g-import-not-at-top
  config = base.get_config('full')
  config.dataset_name = 'bible_fr_en'
  config.model.dtype = 'float32'
  config.eval_batch_size = 16
  tokenizer = input_pipeline.prepare_vocabulary(config)
  run = workdir.Workdir(os.path.join(folder, 'run'))
  run.start(config, tokenizer)
  state = steps.compile_steps(config, sharding.make_mesh()).init()
  # Adam's moments start at zero, which storage and memory both get for free (untouched
  # pages); a trained run's are dense, so they are filled here.
  state = state.replace(opt_state=jax.tree.map(
      lambda x: jnp.full_like(x, 1e-3) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      state.opt_state))
  checkpointer = run.checkpointer(1)
  checkpointer.save(0, state, iter(grain.MapDataset.range(1).to_iter_dataset()))
  checkpointer.wait_until_finished()
  checkpointer.close()
  source = os.path.join(folder, 'source.fr')
  pairs = datasets.load_pairs(config, 'test')[:_SENTENCES.value]
  with open(source, 'w', encoding='utf-8') as f:
    f.writelines(fr + '\n' for fr, _ in pairs)
  return run.path, source


def _peak_mib(script: list[str], folder: str) -> float:
  """Peak resident memory of `python <script...>` in a fresh process, in MiB."""
  peak = os.path.join(folder, 'peak')
  subprocess.run([sys.executable, '-c', _MEASURED, *script], check=True, capture_output=True,
                 env={**os.environ, 'PEAK': peak})
  with open(peak) as f:
    return int(f.read()) / 1024  # VmHWM is in KiB.


def main(argv):
  del argv
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as scratch:
    folder = _FOLDER.value or scratch
    run, source = _make_run_folder(folder)
    whole = os.path.join(folder, 'whole_state.py')
    with open(whole, 'w') as f:
      f.write(_WHOLE_STATE)
    load_only = os.path.join(folder, 'load_only.py')
    with open(load_only, 'w') as f:
      f.write('import sys\nfrom transformer import inference\n'
              "inference.load_trained(sys.argv[1], 'latest')\n")
    kinds = {
        'load: params only (inference.load_trained)': [load_only, run],
        'load: whole state (before)': [whole, run],
        'decode: params only (decode.py)': [os.path.join(root, 'decode.py'), f'--workdir={run}',
                                            f'--input={source}', '--checkpoint=latest'],
        'decode: whole state (before)': [whole, run, source],
    }
    peaks = {name: [] for name in kinds}
    for _ in range(_RUNS.value):
      for name, script in kinds.items():
        peaks[name].append(_peak_mib(script, folder))
  for key, value in machine.describe().items():
    print(f'{key:12s} {value}')
  print(f'\nPeak resident memory of decoding {_SENTENCES.value} test sentences with '
        'Transformer-base (52 M float32 parameters), beam 4, each run a fresh process:\n')
  print('| restore | peak MiB, each run |\n|---|---|')
  for name, values in peaks.items():
    print(f"| {name} | {', '.join(f'{v:,.0f}' for v in values)} |")


if __name__ == '__main__':
  app.run(main)
