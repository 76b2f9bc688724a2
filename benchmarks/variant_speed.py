"""Training steps per second of each study variant, measured alone, and its FLOPs per step.

  python -m benchmarks.variant_speed --scale=small --experiment_dir=results/bible

The study's wall times mix runs that shared the machine, so the report takes compute from
here instead: each variant's compiled train step (the study's regime, the real pipeline's
first batches, already on the device) timed in rounds that visit the variants in turn, so
that a change in the machine's load falls on all of them alike. Run it with nothing else on
the machine. Prints a table naming the machine; with --experiment_dir, writes speed.json
there for the report, with the training code's version (provenance.code_version), which the
report compares with the runs'. R-Drop runs the model twice a step, so twice the FLOPs.
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax

from benchmarks import batches as batches_lib
from benchmarks import machine
from configs import base
from transformer import flops
from transformer import provenance
from transformer import study
from transformer import study_plan
from transformer import workdir as workdir_lib

_SCALE = flags.DEFINE_enum('scale', 'small', list(base.SCALES), 'Scale of the study.')
_VARIANTS = flags.DEFINE_list('variants', list(study_plan.STUDY_VARIANTS), 'Variants to time.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per variant in each round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds over all variants.')
_EXPERIMENT_DIR = flags.DEFINE_string('experiment_dir', '', 'Write speed.json here.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "The TFDS data_dir ('' = the configs').")


def main(argv):
  del argv
  overrides = {'data_dir': _DATA_DIR.value} if _DATA_DIR.value else {}
  plan = study.Study(_SCALE.value, variants=_VARIANTS.value, overrides=overrides)
  runs = {}
  for variant in plan.variants:
    config = plan.config(variant)
    batches = batches_lib.packed_batches(config, _STEPS.value)
    step, state, device_batches = batches_lib.jax_train_step(config, batches)
    state, metrics = step(state, device_batches[0])  # The first call pays for the allocation.
    jax.block_until_ready(metrics)
    runs[variant] = {'config': config, 'step': step, 'state': state, 'batches': device_batches}
  seconds = {variant: [] for variant in runs}
  for _ in range(_ROUNDS.value):
    for variant, run in runs.items():
      start = time.perf_counter()
      for batch in run['batches']:
        run['state'], metrics = run['step'](run['state'], batch)
      jax.block_until_ready(metrics)
      seconds[variant].append((time.perf_counter() - start) / len(run['batches']))
  described = machine.describe()
  name = f"{described['jax devices']}, {described['cpu']}, {described['cpu cores']} cores"
  print(f'Machine: {name}; {_ROUNDS.value} rounds of {_STEPS.value} steps per variant.')
  print('| variant | steps/s (median of rounds) | range | GFLOP/step | GFLOP/s |')
  print('|---|---|---|---|---|')
  speed, version = {}, provenance.code_version()  # The report checks it against the runs'.
  for variant, times in seconds.items():
    rate = 1 / statistics.median(times)
    gflop = flops.config_step_flops(runs[variant]['config']) / 1e9
    speed[variant] = {'steps_per_second': rate, 'steps_per_second_range':
                      [1 / max(times), 1 / min(times)], 'gflop_per_step': gflop, 'machine': name,
                      'code_version': version}
    print(f'| {variant} | {rate:.2f} | {1 / max(times):.2f}–{1 / min(times):.2f} | '
          f'{gflop:.1f} | {rate * gflop:.1f} |')
  if _EXPERIMENT_DIR.value:
    path = workdir_lib.ExperimentDir(_EXPERIMENT_DIR.value).file(workdir_lib.ExperimentDir.SPEED)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(speed, f, indent=1)
    print(f'Wrote {path}')


if __name__ == '__main__':
  app.run(main)
