"""The full-scale machinery at tiny size: accumulation, bfloat16, averaging, early stopping."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import conftest
from configs import base
from transformer import inference
from transformer import config_checks
from transformer import input_pipeline
from transformer import metrics as metrics_lib

from transformer import models
from transformer import sharding
from transformer import steps
from transformer import training
from transformer import workdir as workdir_lib


def _two_steps(config, micro_batches, mesh):
  """The state after one optimizer step over `micro_batches` (an accumulation group)."""
  compiled = steps.compile_steps(config, mesh)
  state = compiled.init()
  group = (input_pipeline.accumulation_group(micro_batches) if len(micro_batches) > 1
           else micro_batches)
  for batch in group:
    state, metrics = compiled.train(state, sharding.shard_batch(batch, mesh))
  return state, metrics


def test_two_half_batches_accumulated_equal_the_full_batch(bible_config, bible_tokenizer):
  """2 x 2 rows through MultiSteps = 4 rows in one step: same update, same grad norm.

  The halves hold different numbers of real tokens, so dividing each half by its own count
  (MultiSteps' mean of two token means) would not match; dividing by the step's count does.
  Adam's epsilon is 1 here so that the update is smooth in the gradient: with 1e-9, a
  gradient that is zero up to rounding (the key biases', which softmax ignores) gets a
  +-learning-rate update from its rounding noise alone.
  """
  exact = {'model.dropout_rate': 0.0, 'adam_eps': 1.0}
  full = conftest.tiny_config(bible_config.data_dir, **exact)
  batch = next(input_pipeline.make_train_iterator(
      full, input_pipeline.prepare(full, evaluate=False).train))
  halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
  assert np.sum(halves[0]['targets'] > 0) != np.sum(halves[1]['targets'] > 0)
  accumulated = conftest.tiny_config(bible_config.data_dir, batch_size=2, grad_accum_steps=2,
                                     **exact)
  mesh = sharding.make_mesh()
  state_full, metrics_full = _two_steps(full, [batch], mesh)
  state_acc, metrics_acc = _two_steps(accumulated, halves, mesh)
  assert int(state_acc.opt_state.gradient_step) == 1  # MultiSteps applied one update.
  init = steps.compile_steps(full, mesh).init().params
  moved = jax.tree.map(lambda a, b: np.asarray(a - b), state_full.params, init)
  moved_acc = jax.tree.map(lambda a, b: np.asarray(a - b), state_acc.params, init)
  assert np.max(np.abs(moved['shared_embedding']['embedding'])) > 1e-8

  def same_move(acc, full, start):
    # The moves agree to 1e-4 of their size, or to the float32 spacing of the parameter they
    # were added to (a parameter that barely moves carries its rounding in its move), or to
    # 1e-12 (a gradient that is zero up to rounding, as the key biases').
    spacing = np.spacing(np.abs(np.asarray(start, np.float32)))
    assert np.all(np.abs(acc - full) <= 1e-4 * np.abs(full) + 2 * spacing + 1e-12)

  jax.tree.map(same_move, moved_acc, moved, init)
  np.testing.assert_allclose(float(metrics_acc['train/grad_norm']),
                             float(metrics_full['train/grad_norm']), rtol=1e-5)


def test_bfloat16_trains_finite_and_close_to_float32(bible_config, bible_tokenizer):
  """Forced bfloat16 on CPU: finite, params float32, losses within 2% of float32 over 3 steps.

  bfloat16 keeps 8 mantissa bits (relative rounding 2**-9 = 0.2% per op); over the layers of a
  forward pass that compounds to a few tenths of a percent of the loss, so 2% fails a real
  error (e.g. logits or the loss computed in bfloat16 over a 4k vocabulary) but not rounding.
  """
  losses = {}
  for dtype in ('float32', 'bfloat16'):
    config = conftest.tiny_config(bible_config.data_dir, **{'model.dropout_rate': 0.0,
                                                            'model.dtype': dtype})
    mesh = sharding.make_mesh()
    compiled = steps.compile_steps(config, mesh)
    state = compiled.init()
    iterator = input_pipeline.make_train_iterator(
      config, input_pipeline.prepare(config, evaluate=False).train)
    losses[dtype] = []
    for _ in range(3):
      state, metrics = compiled.train(state, sharding.shard_batch(next(iterator), mesh))
      losses[dtype].append(float(metrics['train/loss']))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.opt_state))
               if jnp.issubdtype(x.dtype, jnp.floating))
  model = models.make_model(config)
  logits = model.apply({'params': jax.device_get(state.params)}, jnp.ones((1, 5), jnp.int32),
                       jnp.ones((1, 3), jnp.int32), train=False)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(losses['bfloat16']))
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.02)
  assert losses['bfloat16'] != losses['float32']  # bfloat16 was really used.


def test_auto_dtype_is_bfloat16_on_accelerators_only():
  assert models.resolve_dtype('auto', 'gpu') == jnp.bfloat16
  assert models.resolve_dtype('auto', 'tpu') == jnp.bfloat16
  assert models.resolve_dtype('auto', 'cpu') == jnp.float32
  assert models.resolve_dtype('float32', 'gpu') == jnp.float32


def test_average_of_checkpoints_is_the_mean_of_their_parameters(bible_config, tmp_path):
  config = conftest.tiny_config(bible_config.data_dir, num_train_steps=4,
                                checkpoint_every_steps=1, max_checkpoints_to_keep=3,
                                **{'model.norm': 'batch_norm'})
  training.train_and_evaluate(config, str(tmp_path))
  abstract = steps.abstract_state(config)
  saved = []
  with ocp.CheckpointManager(tmp_path / 'checkpoints', item_names=('state',),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    assert manager.all_steps() == [2, 3, 4]
    for step in (3, 4):
      saved.append(manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract))).state)
  averaged = inference.load_trained(str(tmp_path), 'average:2')
  assert averaged.step == 4
  for name in ('params', 'batch_stats'):
    expected = jax.tree.map(lambda a, b: (np.asarray(a, np.float64) + b) / 2,
                            getattr(saved[0], name), getattr(saved[1], name))
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6),
                 averaged.variables[name], expected)
  assert not np.allclose(saved[0].params['shared_embedding']['embedding'],
                         saved[1].params['shared_embedding']['embedding'])


def test_patience_stops_the_run_and_a_resumed_run_stays_stopped(bible_config, tmp_path,
                                                                 monkeypatch):
  scores = iter([5.0, 7.0, 6.0, 6.5, 9.0, 9.0])
  monkeypatch.setattr(training.Validation, '__init__', lambda self, *args: None)
  monkeypatch.setattr(training.Validation, 'bleu',
                      lambda self, state: {'eval/bleu': next(scores), 'eval/chrf': 0.0})
  config = conftest.tiny_config(bible_config.data_dir, num_train_steps=12, eval_every_steps=1,
                                checkpoint_every_steps=5, patience=2)
  last = training.train_and_evaluate(config, str(tmp_path))
  # Best 7.0 at the 2nd evaluation; the 3rd and 4th do not beat it: stop at step 4.
  assert last['train/stopped_early_at_step'] == 4
  rows = workdir_lib.Workdir(str(tmp_path)).metrics()
  assert [r['eval/bleu'] for r in rows if 'eval/bleu' in r] == [5.0, 7.0, 6.0, 6.5]
  assert workdir_lib.Workdir(str(tmp_path)).saved_steps()[-1] == 4
  training.train_and_evaluate(config, str(tmp_path))  # Counts from metrics.jsonl: no step.
  assert workdir_lib.Workdir(str(tmp_path)).metrics()[-1]['step'] == 4
  assert metrics_lib.evaluations_since_best([1.0, 3.0, 2.0]) == 1
  assert metrics_lib.evaluations_since_best([]) == 0


def test_full_config_is_valid_and_budgets_in_epochs():
  config = base.get_config('full')
  config_checks.validate(config)
  assert config.num_train_steps == 0 and config.num_train_epochs == 50
  assert input_pipeline.micro_batch_rows(config) * config.max_target_length == 25_088
  config.grad_accum_steps = 4
  config_checks.validate(config)
  assert input_pipeline.micro_batch_rows(config) == 56
  small = base.get_config('small')
  assert small.num_train_steps == 1_300 and input_pipeline.micro_batch_rows(small) == 16
