"""Multi-process data parallelism: two processes train what one process with two devices does.

Two `train.py` processes on localhost (one CPU device each, JAX's distributed runtime) must
produce the parameters and per-step losses of a single process with two devices fed the same
global batches (process 0's rows, then process 1's), each process must read its own shard of
the data and checkpoint its own iterator.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest

from transformer import input_pipeline

from transformer import sharding
from transformer import steps

from transformer import training
from transformer import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
TINY = {**conftest.TINY, 'num_train_steps': STEPS}


def tiny(data_dir, **overrides):
  return conftest.tiny_config(data_dir, **{**TINY, **overrides})


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def latest_state(workdir, like=None):
  """(step, TrainState arrays) of the latest checkpoint; shaped `like` onto this process's
  first device, for a checkpoint of other devices (orbax will not map their ids itself)."""
  target = None
  if like is not None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          like)
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state',),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  return step, state.state


def train_rows(workdir):
  return [row for row in workdir_lib.Workdir(workdir).metrics() if 'train/loss' in row]


class BothShards:
  """What a 2-process run's global batch holds, for one process: shard 0's rows, then 1's."""

  def __init__(self, config, examples, make_iterator):
    self.shards = [make_iterator(config, examples, process_index=i, process_count=2)
                   for i in range(2)]

  def __next__(self):
    parts = [next(shard) for shard in self.shards]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

  def get_state(self) -> bytes:  # grain's orbax handler stores these bytes as text.
    return json.dumps([shard.get_state() for shard in self.shards]).encode()

  def set_state(self, state: bytes) -> None:
    for shard, shard_state in zip(self.shards, json.loads(state)):
      shard.set_state(shard_state)

  def start_prefetch(self) -> None:
    pass


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """An empty data_dir: the two processes must prepare the dataset and vocabulary in it."""
  return os.fspath(tmp_path_factory.mktemp('empty_tfds'))


@pytest.fixture(scope='module')
def tokenizer(two_processes, data_dir):
  """The vocabulary process 0 trained (the others waited for it)."""
  del two_processes
  return input_pipeline.prepare_vocabulary(tiny(data_dir))


@pytest.fixture(scope='module')
def two_processes(data_dir, tmp_path_factory):
  """The workdir of a 2-process run (one CPU device each) of the tiny config.

  It starts from an empty data_dir: process 0 builds the Bible and trains the vocabulary while
  process 1 waits at the barrier in input_pipeline.prepare.
  """
  assert not os.listdir(data_dir)
  workdir = tmp_path_factory.mktemp('two_processes')
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  processes = []
  for index in range(2):
    command = [sys.executable, os.path.join(ROOT, 'train.py'),
               f'--config={ROOT}/configs/baseline.py:small', f'--workdir={workdir / "run"}',
               f'--config.data_dir={data_dir}',
               f'--coordinator_address=localhost:{port}', '--num_processes=2',
               f'--process_id={index}'] + [f'--config.{k}={v}' for k, v in TINY.items()]
    with open(workdir / f'process_{index}.log', 'w') as log:
      processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=ROOT))
  try:
    for process in processes:
      process.wait(timeout=600)  # Under a concurrent load 300 s was too few.
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for index, process in enumerate(processes):
    assert process.returncode == 0, (workdir / f'process_{index}.log').read_text()[-3000:]
  return workdir / 'run'


def test_two_processes_train_what_one_process_with_two_devices_does(
    two_processes, data_dir, tmp_path, monkeypatch):
  assert jax.device_count() == 2  # conftest.py asks XLA for two CPU devices.
  make_iterator = input_pipeline.make_train_iterator
  monkeypatch.setattr(training.input_pipeline, 'make_train_iterator',
                      lambda config, examples, **_: BothShards(config, examples, make_iterator))
  training.train_and_evaluate(tiny(data_dir), os.fspath(tmp_path))

  step_sp, state_sp = latest_state(tmp_path)
  step_mp, state_mp = latest_state(two_processes, like=state_sp)
  assert step_mp == step_sp == STEPS
  rows_mp, rows_sp = train_rows(two_processes), train_rows(tmp_path)
  assert [r['step'] for r in rows_mp] == [r['step'] for r in rows_sp] == list(range(1, STEPS + 1))
  assert [r['train/tokens'] for r in rows_mp] == [r['train/tokens'] for r in rows_sp]
  # Same devices, same per-device programs, same psum of two terms: bit for bit.
  assert [r['train/loss'] for r in rows_mp] == [r['train/loss'] for r in rows_sp]
  jax.tree.map(np.testing.assert_array_equal, state_mp, state_sp)


def test_each_process_reads_and_checkpoints_its_own_shard(two_processes, data_dir, tokenizer):
  config = tiny(data_dir)
  del tokenizer  # Trained by process 0 of the two-process run; prepare loads it.
  shards = BothShards(config, input_pipeline.prepare(config, evaluate=False).train,
                      input_pipeline.make_train_iterator).shards
  tokens = []
  for _ in range(STEPS):
    per_shard = [int(np.sum(next(shard)['targets'] > 0)) for shard in shards]
    tokens.append(per_shard)
  # The global batch's target tokens, as process 0 logged them, are both shards' ...
  logged = [r['train/tokens'] for r in train_rows(two_processes)]
  assert logged == [float(a + b) for a, b in tokens]
  # ... which one shard read twice would not give.
  assert logged != [float(2 * a) for a, _ in tokens]
  for index, shard in enumerate(shards):
    path = two_processes / 'checkpoints' / str(STEPS) / 'data' / f'process_{index}-of-2.json'
    assert json.loads(path.read_text()) == shard.get_state()


def test_gradient_is_not_multiplied_by_the_device_count(bible_config, bible_tokenizer):
  """One step's gradient norm on two devices is that of one device, for the same batch.

  shard_map already all-reduces the gradient of replicated parameters; an explicit psum on
  top doubled it on two devices (Adam hid it; clipping and the grad_norm metric did not).
  """
  config = tiny(bible_config.data_dir, **{'model.dropout_rate': 0.0})
  batch = next(input_pipeline.make_train_iterator(
      config, input_pipeline.prepare(config, evaluate=False).train))
  norms = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = jax.make_mesh((len(devices),), (sharding.AXIS,), devices=devices)
    compiled = steps.compile_steps(config, mesh)
    _, step_metrics = compiled.train(compiled.init(), sharding.shard_batch(batch, mesh))
    norms.append(float(step_metrics['train/grad_norm']))
  np.testing.assert_allclose(norms[1], norms[0], rtol=1e-5)
