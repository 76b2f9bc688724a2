"""The training loop: exact resume, data parallelism, NaN skipping, one compile per step."""

import functools

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest
from transformer import inference
from transformer import input_pipeline
from transformer import sharding
from transformer import steps
from transformer import training
from transformer import workdir as workdir_lib


def tiny(bible_config, **overrides):
  return conftest.tiny_config(bible_config.data_dir, **{
      'num_train_steps': 6, 'warmup_steps': 2, 'checkpoint_every_steps': 4,
      'diagnostics_every_steps': 2, **overrides})


def final_state(workdir):
  """The raw arrays of the latest checkpoint's TrainState."""
  with ocp.CheckpointManager(f'{workdir}/checkpoints', item_names=('state',),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, state.state


def metric_rows(workdir):
  """metrics.jsonl without the wall-clock fields, which no two runs share."""
  return [{k: v for k, v in row.items() if not k.startswith('time/')}
          for row in workdir_lib.Workdir(workdir).metrics()
          if any(not k.startswith('time/') for k in row if k != 'step')]


class _StopAfter:
  """Stands in for the SIGTERM flag: 'raised' once the loop has checked it `steps` times."""

  def __init__(self, steps):
    self._left = steps

  @property
  def raised(self):
    self._left -= 1
    return self._left < 0

  def restore(self):
    pass


def test_resume_equals_unbroken_run(bible_config, tmp_path, monkeypatch):
  """With gradient accumulation, so optax.MultiSteps' state must be checkpointed too (the
  plain path is resumed in test_bad_inputs' SIGTERM, Ctrl-C and fault-injection tests)."""
  config = tiny(bible_config, grad_accum_steps=2)
  training.train_and_evaluate(config, str(tmp_path / 'unbroken'))
  # Preempted after 3 steps (between checkpoints: the flag saves at step 3), then resumed.
  with monkeypatch.context() as patch:
    patch.setattr(training, '_PreemptionFlag', lambda stop_at: _StopAfter(3))
    training.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert final_state(tmp_path / 'resumed')[0] == 3
  training.train_and_evaluate(config, str(tmp_path / 'resumed'))

  step_a, state_a = final_state(tmp_path / 'unbroken')
  step_b, state_b = final_state(tmp_path / 'resumed')
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)  # Bit for bit.
  rows_a, rows_b = metric_rows(tmp_path / 'unbroken'), metric_rows(tmp_path / 'resumed')
  assert rows_a == rows_b
  assert [r['step'] for r in rows_a if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]
  assert {r['step'] for r in rows_a if any(k.startswith('grad_norm/') for k in r)} == {1, 3, 5}


def test_resume_with_another_model_is_a_clear_error(bible_config, tmp_path):
  config = tiny(bible_config, num_train_steps=2)
  training.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match=r'model\.emb_dim: 16 in the workdir, 32 now'):
    training.train_and_evaluate(tiny(bible_config, **{'model.emb_dim': 32}), str(tmp_path))


def test_best_is_the_latest_checkpoint_when_no_evaluation_ran(bible_config, tmp_path):
  """eval_every_steps=0 scores no checkpoint: decoding 'best' then means the last state."""
  config = tiny(bible_config, num_train_steps=6)  # Checkpoints at steps 4 and 6.
  training.train_and_evaluate(config, str(tmp_path))
  best = inference.load_trained(str(tmp_path), 'best')
  step_4 = inference.load_trained(str(tmp_path), '4')
  latest_step, latest = final_state(str(tmp_path))
  assert best.step == latest_step == 6 and best.checkpoint == 'the latest checkpoint (step 6)'
  jax.tree.map(np.testing.assert_array_equal, best.variables['params'], latest['params'])
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(best.variables['params']), jax.tree.leaves(step_4.variables['params'])))


def _run_steps(config, mesh, batches, state=None):
  compiled = steps.compile_steps(config, mesh)
  state = compiled.init() if state is None else jax.device_put(state, sharding.replicated(mesh))
  losses = []
  for batch in batches:
    state, step_metrics = compiled.train(state, sharding.shard_batch(batch, mesh))
    losses.append(float(step_metrics['train/loss']))
  return jax.device_get(state), losses, compiled


@pytest.mark.parametrize('variant', ['baseline', 'batch_norm'])
def test_two_devices_compute_what_one_does(bible_config, bible_tokenizer, variant):
  """Data parallelism changes nothing but the summation order.

  Without dropout: each device draws its own dropout mask, so masks (not the math) depend
  on the device count. BatchNorm's statistics are all-reduced, so they are the global
  batch's; the loss is normalized by the global token count, which differs per device.
  Adam's epsilon is raised because with 1e-9 it turns a gradient of 1e-9 ± rounding into
  an update of ± the learning rate, so summation order alone would move such weights by lr.
  """
  assert jax.device_count() == 2  # conftest.py asks XLA for two CPU devices.
  config = tiny(bible_config, adam_eps=1e-3, **{'model.dropout_rate': 0.0})
  if variant == 'batch_norm':
    config.model.norm = 'batch_norm'
  iterator = input_pipeline.make_train_iterator(
      config, input_pipeline.prepare(config, evaluate=False).train)
  batches = [next(iterator) for _ in range(3)]
  one = jax.make_mesh((1,), (sharding.AXIS,), devices=jax.devices()[:1])
  two = jax.make_mesh((2,), (sharding.AXIS,), devices=jax.devices()[:2])
  state_one, losses_one, _ = _run_steps(config, one, batches)
  state_two, losses_two, _ = _run_steps(config, two, batches)
  np.testing.assert_allclose(losses_one, losses_two, rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               state_one.params, state_two.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               state_one.batch_stats, state_two.batch_stats)
  assert losses_one[2] < losses_one[0]  # And it learns.


def test_steps_compile_once(bible_config, bible_tokenizer):
  """After the first step, new batches and the step's own output state compile nothing."""
  config = tiny(bible_config)
  iterator = input_pipeline.make_train_iterator(
      config, input_pipeline.prepare(config, evaluate=False).train)
  mesh = sharding.make_mesh()
  compiled = steps.compile_steps(config, mesh)
  state, _ = compiled.train(compiled.init(), sharding.shard_batch(next(iterator), mesh))
  compiles = []

  def count(event, duration=None, **kwargs):  # A compile, or a program loaded from the cache.
    del duration, kwargs
    if event in ('/jax/core/compile/backend_compile_duration',
                 '/jax/compilation_cache/cache_hits'):
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(count)
  jax.monitoring.register_event_listener(count)
  try:
    for _ in range(3):
      state, step_metrics = compiled.train(state, sharding.shard_batch(next(iterator), mesh))
    jax.block_until_ready(step_metrics)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
    jax.monitoring.unregister_event_listener(count)
  assert not compiles


def test_nonfinite_step_is_skipped_and_counted(bible_config, bible_tokenizer, monkeypatch):
  """A step whose loss is NaN leaves params and optimizer state exactly as they were."""
  real_loss_sum = steps.loss_sum
  poison = 7  # A batch whose first token is this one yields a NaN loss.

  def poisoned_loss_sum(params, batch_stats, batch, rng, **kwargs):
    loss, updates = real_loss_sum(params, batch_stats, batch, rng, **kwargs)
    return jax.numpy.where(batch['inputs'][0, 0] == poison, jax.numpy.nan, loss), updates

  monkeypatch.setattr(steps, 'loss_sum', poisoned_loss_sum)
  config = tiny(bible_config)
  iterator = input_pipeline.make_train_iterator(
      config, input_pipeline.prepare(config, evaluate=False).train)
  good = [next(iterator) for _ in range(2)]
  bad = {k: v.copy() for k, v in good[1].items()}
  bad['inputs'][0, 0] = poison
  assert all(b['inputs'][0, 0] != poison for b in good)
  mesh = sharding.make_mesh()
  after_good, _, _ = _run_steps(config, mesh, good[:1])
  after_bad, losses, _ = _run_steps(config, mesh, [bad], state=after_good)
  assert np.isnan(losses[0])
  jax.tree.map(np.testing.assert_array_equal, after_bad.params, after_good.params)
  jax.tree.map(np.testing.assert_array_equal, after_bad.opt_state, after_good.opt_state)
  assert (int(after_bad.step), int(after_bad.nonfinite_streak),
          int(after_bad.nonfinite_total)) == (2, 1, 1)
  after_next, losses, _ = _run_steps(config, mesh, good[1:], state=after_bad)
  assert np.isfinite(losses[0])
  assert (int(after_next.nonfinite_streak), int(after_next.nonfinite_total)) == (0, 1)
  assert not np.array_equal(jax.tree.leaves(after_next.params)[0],
                            jax.tree.leaves(after_bad.params)[0])
