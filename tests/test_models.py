"""Tests for transformer.models: attention vs NumPy, cached decoding, padding, packing, inits."""

import dataclasses
import importlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from transformer import variants
from configs import base
from transformer import models

VARIANTS = variants.variant_names()
Transformer = models.Transformer

# Source length 5, target length 3; row 1 is padded in both.
SRC = jnp.array([[3, 4, 5, 6, 2], [7, 8, 9, 0, 0]], jnp.int32)
TGT = jnp.array([[4, 5, 1], [6, 1, 0]], jnp.int32)


def tiny_config(variant: str = 'baseline', **overrides) -> models.ModelConfig:
  """The variant's model fields at test size: vocab 11, d_model 8, 2 heads of 4, mlp 12."""
  config = importlib.import_module(f'configs.{variant}').get_config('small')
  cfg = models.ModelConfig.from_config(config.model)
  sizes = dict(vocab_size=11, emb_dim=8, num_heads=2, qkv_dim=8, mlp_dim=12, num_layers=2,
               max_len=16)
  return dataclasses.replace(cfg, **{**sizes, **overrides})


def no_dropout(cfg: models.ModelConfig) -> models.ModelConfig:
  return dataclasses.replace(cfg, dropout_rate=0.0, attention_dropout_rate=0.0,
                             activation_dropout_rate=0.0)


def init_variables(model, seed=0):
  """Init, then perturb every parameter so no variant is trivial (ReZero gates are 0 at init),
  then run one training pass so BatchNorm running statistics are not the defaults."""
  variables = model.init(jax.random.key(seed), SRC, TGT, train=False)
  leaves, treedef = jax.tree.flatten(variables['params'])
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  variables = {**variables, 'params': jax.tree.unflatten(treedef, leaves)}
  _, updates = model.apply(variables, SRC, TGT, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.key(seed + 2)})
  return {**variables, **updates}


def train_logits(model, variables, *args, **kwargs):
  """Logits with train=True (batch statistics) but the config's dropout set to 0 by caller."""
  logits, _ = model.apply(variables, *args, train=True, mutable=['batch_stats'], **kwargs)
  return logits


def numpy_attention(x, memory, mask, p, num_heads):
  """Independent reference: project, split heads, softmax(q k^T / sqrt(dh)) v, merge, project."""
  def project(y, dense):
    return np.einsum('bte,ehd->bthd', y, dense['kernel']) + dense['bias']
  q, k, v = project(x, p['query']), project(memory, p['key']), project(memory, p['value'])
  head_dim = q.shape[-1]
  out = np.zeros(q.shape)
  weights = np.zeros((x.shape[0], num_heads, x.shape[1], memory.shape[1]))
  for b in range(x.shape[0]):
    for h in range(num_heads):
      scores = q[b, :, h] @ k[b, :, h].T / np.sqrt(head_dim)
      scores = np.where(mask[b, 0], scores, -np.inf)
      w = np.exp(scores - scores.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      weights[b, h] = w
      out[b, :, h] = w @ v[b, :, h]
  return np.einsum('bthd,hde->bte', out, p['out']['kernel']) + p['out']['bias'], weights


def _attend(module, x, memory, mask):
  return module(x, *module.keys_values(memory), mask, train=False)


@pytest.mark.parametrize('impl', ['xla', 'einsum'])
def test_attention_matches_numpy(impl):
  cfg = tiny_config(attention_impl=impl)
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  memory = jax.random.normal(jax.random.key(1), (2, 5, 8))
  mask = jax.random.bernoulli(jax.random.key(2), 0.6, (2, 1, 3, 5)).at[..., 0].set(True)
  mha = models.MultiHeadAttention(cfg, 'encoder')
  variables = mha.init(jax.random.key(3), x, memory, mask, method=_attend)
  out, state = mha.apply(variables, x, memory, mask, method=_attend,
                         mutable=['attention_weights'])
  p = jax.tree.map(np.asarray, variables['params'])
  expected, weights = numpy_attention(np.asarray(x), np.asarray(memory), np.asarray(mask), p, 2)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state['attention_weights']['weights'][0], weights, atol=1e-6)
  # Without the collection the configured implementation runs; same numbers.
  np.testing.assert_allclose(mha.apply(variables, x, memory, mask, method=_attend), expected,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('variant', VARIANTS)
def test_cached_decoding_equals_full_pass(variant):
  model = Transformer(tiny_config(variant))
  variables = init_variables(model)
  full = model.apply(variables, SRC, TGT, train=False)
  max_decode_len = 5  # Longer than the targets: unused cache slots must be masked.
  cache = model.apply(variables, SRC, max_decode_len, method=Transformer.init_cache)
  step = jax.jit(lambda c, t: model.apply(variables, c, t, method=Transformer.decode_step))
  decoder_inputs = models.shift_right(TGT)
  real = np.asarray(TGT != 0)
  for t in range(TGT.shape[1]):
    logits, cache = step(cache, decoder_inputs[:, t])
    assert logits.shape == (2, 11) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits[real[:, t]], full[:, t][real[:, t]], rtol=1e-5, atol=1e-4)
  assert int(cache['index']) == TGT.shape[1]


@pytest.mark.parametrize('variant', VARIANTS)
def test_padding_changes_no_output(variant):
  """Extra padding columns and an all-padding row leave real positions unchanged, in training
  (BatchNorm batch statistics) and in evaluation."""
  model = Transformer(no_dropout(tiny_config(variant)))
  variables = init_variables(model)
  src = jnp.pad(SRC, ((0, 1), (0, 2)))
  tgt = jnp.pad(TGT, ((0, 1), (0, 3)))
  real = np.asarray(TGT != 0)
  np.testing.assert_allclose(train_logits(model, variables, src, tgt)[:2, :3][real],
                             train_logits(model, variables, SRC, TGT)[real], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.apply(variables, src, tgt, train=False)[:2, :3][real],
                             model.apply(variables, SRC, TGT, train=False)[real],
                             rtol=1e-5, atol=1e-5)
  # The encoder alone: padded positions do not reach real ones.
  enc = model.apply(variables, src, method=Transformer.encode)
  np.testing.assert_allclose(enc[:2, :5][SRC != 0], model.apply(
      variables, SRC, method=Transformer.encode)[SRC != 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('variant', VARIANTS)
def test_packed_row_equals_separate_sentences(variant):
  model = Transformer(no_dropout(tiny_config(variant)))
  variables = init_variables(model)
  # Sentence A: src [3 4 5] -> tgt [4 1]; sentence B: src [6 7] -> tgt [8 9 1].
  packed = dict(
      inputs_positions=jnp.array([[0, 1, 2, 0, 1, 0]]),
      inputs_segmentation=jnp.array([[1, 1, 1, 2, 2, 0]]),
      targets_positions=jnp.array([[0, 1, 0, 1, 2, 0]]),
      targets_segmentation=jnp.array([[1, 1, 2, 2, 2, 0]]))
  src_packed = jnp.array([[3, 4, 5, 6, 7, 0]])
  tgt_packed = jnp.array([[4, 1, 8, 9, 1, 0]])
  src = jnp.array([[3, 4, 5], [6, 7, 0]])
  tgt = jnp.array([[4, 1, 0], [8, 9, 1]])
  # In training the packed and the separate batch hold the same real tokens, so even
  # BatchNorm's batch statistics agree.
  for train in (True, False):
    if train:
      got = train_logits(model, variables, src_packed, tgt_packed, **packed)
      want = train_logits(model, variables, src, tgt)
    else:
      got = model.apply(variables, src_packed, tgt_packed, train=False, **packed)
      want = model.apply(variables, src, tgt, train=False)
    np.testing.assert_allclose(got[0, :2], want[0, :2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0, 2:5], want[1, :3], rtol=1e-5, atol=1e-5)


def test_shift_right_respects_segments():
  targets = jnp.array([[4, 1, 8, 9, 1, 0]])
  segments = jnp.array([[1, 1, 2, 2, 2, 0]])
  np.testing.assert_array_equal(models.shift_right(targets, segments), [[0, 4, 0, 8, 9, 0]])
  np.testing.assert_array_equal(models.shift_right(targets), [[0, 4, 1, 8, 9, 1]])


def test_encode_decode_compose_to_call():
  model = Transformer(tiny_config())
  variables = init_variables(model)
  encoded = model.apply(variables, SRC, method=Transformer.encode)
  logits = model.apply(variables, encoded, SRC, TGT, method=Transformer.decode)
  np.testing.assert_allclose(logits, model.apply(variables, SRC, TGT, train=False), rtol=1e-6)


def test_sinusoidal_positions_match_paper():
  pos = np.arange(4)[:, None]
  i = np.arange(4)[None, :]  # dim 8: 4 frequencies
  angle = pos / 10_000 ** (2 * i / 8)
  expected = np.concatenate([np.sin(angle), np.cos(angle)], axis=-1)
  np.testing.assert_allclose(models.sinusoidal_positions(jnp.arange(4), 8), expected, atol=1e-6)


def test_deep_norm_constants_match_paper():
  """Wang et al. 2022 (arXiv:2203.00555), encoder-decoder, N = M = 6."""
  cfg = tiny_config('deep_norm', num_layers=6)
  n = m = 6
  enc = models.residual_scales(cfg, 'encoder')
  dec = models.residual_scales(cfg, 'decoder')
  np.testing.assert_allclose(enc, (0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16)))
  np.testing.assert_allclose(dec, ((3 * m) ** 0.25, (12 * m) ** -0.25))
  np.testing.assert_allclose(enc + dec, (1.4179, 0.4970, 2.0598, 0.3433), atol=1e-4)
  assert models.residual_scales(tiny_config('baseline'), 'encoder') == (1.0, 1.0)


def test_deep_norm_init_gain():
  """Value, output and FFN kernels are Xavier-uniform times beta; query and key are not."""
  cfg = tiny_config('deep_norm', emb_dim=64, qkv_dim=64, mlp_dim=96, num_heads=4)
  params = Transformer(cfg).init(jax.random.key(0), SRC, TGT, train=False)['params']
  for stack in ('encoder', 'decoder'):
    _, beta = models.residual_scales(cfg, stack)
    layer = params[f'{stack}_layer_0']
    limit = lambda shape_in, shape_out: np.sqrt(6 / (shape_in + shape_out))
    ratios = {
        'query': np.abs(layer['self_attention']['query']['kernel']).max() / limit(64, 64),
        'value': np.abs(layer['self_attention']['value']['kernel']).max() / limit(64, 64),
        'out': np.abs(layer['self_attention']['out']['kernel']).max() / limit(64, 64),
        'wi': np.abs(layer['mlp']['wi']['kernel']).max() / limit(64, 96),
    }
    assert 0.95 < ratios['query'] <= 1.0
    for name in ('value', 'out', 'wi'):
      assert 0.95 * beta < ratios[name] <= beta, (stack, name, ratios[name], beta)


def test_rezero_starts_as_identity():
  """Gates start at 0 (Bachlechner et al. 2020): the encoder returns its embedded input."""
  cfg = no_dropout(tiny_config('rezero'))
  model = Transformer(cfg)
  variables = model.init(jax.random.key(0), SRC, TGT, train=False)
  gates = [v for path, v in flax.traverse_util.flatten_dict(variables['params']).items()
           if path[-1] == 'rezero_gate']
  assert len(gates) == 2 * 2 + 2 * 3 and all(float(g) == 0.0 for g in gates)
  embedding = variables['params']['shared_embedding']['embedding']
  expected = embedding[SRC] * np.sqrt(8) + models.sinusoidal_positions(
      jnp.broadcast_to(jnp.arange(5), SRC.shape), 8)
  np.testing.assert_allclose(model.apply(variables, SRC, method=Transformer.encode), expected,
                             rtol=1e-6)


def transformer_base_param_count(v, d, h, n, f, norm_params_per_norm):
  """Closed formula; h (=qkv width) and d separate so a swapped axis shows."""
  attention = 4 * d * h + 3 * h + d  # q, k, v: d*h + h each; out: h*d + d.
  ffn = 2 * d * f + f + d
  encoder_layer = attention + ffn + 2 * norm_params_per_norm
  decoder_layer = 2 * attention + ffn + 3 * norm_params_per_norm
  return v * d + n * (encoder_layer + decoder_layer)


def test_transformer_base_parameter_count():
  config = base.get_config('full')
  model = Transformer(models.ModelConfig.from_config(config.model))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 7), jnp.int32),
                                             jnp.ones((1, 5), jnp.int32), train=False))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))
  expected = transformer_base_param_count(16_000, 512, 512, 6, 2048, 2 * 512)
  assert count == expected == 52_330_496


def test_activation_rms_is_sown_per_sublayer():
  model = Transformer(tiny_config())
  variables = model.init(jax.random.key(0), SRC, TGT, train=False)
  assert 'intermediates' not in variables
  _, state = model.apply(variables, SRC, TGT, train=False, mutable=['intermediates'])
  rms = flax.traverse_util.flatten_dict(state['intermediates'])
  assert len(rms) == 2 * (2 * 2 + 2 * 3)  # branch and output, per sublayer.
  # Post-LN with unit scale and zero bias at init: every sublayer output has RMS 1.
  outputs = [float(v[0]) for k, v in rms.items() if k[-1] == 'output_rms']
  np.testing.assert_allclose(outputs, 1.0, atol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg32 = tiny_config()
  model16 = Transformer(dataclasses.replace(cfg32, dtype='bfloat16'))
  variables = init_variables(Transformer(cfg32))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(
      model16.init(jax.random.key(0), SRC, TGT, train=False)))
  logits16 = model16.apply(variables, SRC, TGT, train=False)
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, Transformer(cfg32).apply(variables, SRC, TGT, train=False),
                             atol=0.25)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_cache_bytes_matches_leaves(dtype):
  cfg = tiny_config(dtype=dtype)
  model = Transformer(cfg)
  variables = model.init(jax.random.key(0), SRC, TGT, train=False)
  beam, max_decode_len = 3, 7
  cache = model.apply(variables, jnp.repeat(SRC, beam, axis=0), max_decode_len,
                      method=Transformer.init_cache)
  for leaf in jax.tree.leaves(cache):
    assert leaf.ndim == 0 or leaf.shape[0] == 2 * beam
  actual = sum(leaf.nbytes for leaf in jax.tree.leaves(cache))
  kwargs = dict(batch=2, beam=beam, source_len=5, max_decode_len=max_decode_len)
  assert models.cache_bytes(cfg, **kwargs) == actual
  per_step = models.cache_bytes(cfg, step=4, **kwargs) - models.cache_bytes(cfg, step=3, **kwargs)
  assert per_step == 2 * cfg.num_layers * 2 * beam * cfg.qkv_dim * jnp.dtype(dtype).itemsize


def test_model_config_rejects_unknown_and_missing_fields():
  model_config = base.get_config('small').model
  models.ModelConfig.from_config(model_config)
  bad = ml_collections.ConfigDict(model_config.to_dict())
  bad.norm_postion = 'pre'
  with pytest.raises(ValueError, match='norm_postion'):
    models.ModelConfig.from_config(bad)
  with pytest.raises(ValueError, match='Unknown norm'):
    dataclasses.replace(models.ModelConfig.from_config(model_config), norm='layernorm')


def test_without_positions_the_encoder_is_blind_to_word_order():
  """Attention is permutation-equivariant: with positions='none', permuting the source words
  permutes the encoder's outputs the same way; the sinusoidal table breaks that symmetry."""
  source = SRC[:1, :4]  # Four real tokens, no padding.
  order = jnp.array([2, 0, 3, 1])
  for positions, equivariant in (('none', True), ('sinusoidal', False)):
    model = Transformer(no_dropout(tiny_config(positions=positions)))
    variables = model.init(jax.random.key(0), source, TGT[:1], train=False)
    encoded = model.apply(variables, source, method=Transformer.encode)
    permuted = model.apply(variables, source[:, order], method=Transformer.encode)
    assert np.allclose(permuted, encoded[:, order], atol=1e-5) == equivariant, positions
