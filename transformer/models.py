"""The encoder-decoder Transformer (Vaswani et al. 2017, arXiv:1706.03762).

One `Sublayer` knows where the norm goes and how the residual is formed; every attention and
feed-forward block goes through it, so the variants are config values, not classes.

Conventions (as in the Flax WMT example): token id 0 is padding and also the decoder's BOS;
packed rows carry explicit `*_positions` and `*_segmentation` (0 on padding), and attention
never crosses segments. Parameters are float32; `config.dtype` is the compute dtype; logits
are float32.

Collections besides 'params': 'batch_stats' (BatchNorm running averages), 'intermediates'
(per-sublayer activation RMS, sown only when the caller makes it mutable) and
'attention_weights' (softmax weights [batch, heads, queries, keys] of every attention,
likewise only when mutable; asking for them switches that call to the einsum path).
"""

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from transformer import norms

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The fields of `config.model` in configs/base.py, each documented there."""
  vocab_size: int
  emb_dim: int
  num_heads: int
  num_layers: int
  qkv_dim: int
  mlp_dim: int
  max_len: int
  positions: str
  dropout_rate: float
  attention_dropout_rate: float
  activation_dropout_rate: float
  norm: str
  norm_position: str
  residual: str
  dtype: str
  attention_impl: str
  batch_norm_axis_name: str

  def __post_init__(self):
    if self.norm not in norms.NORMS:
      raise ValueError(f'Unknown norm {self.norm!r}; expected one of {sorted(norms.NORMS)}.')
    if self.norm_position not in ('pre', 'post'):
      raise ValueError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}.")
    if self.residual not in RESIDUALS:
      raise ValueError(f'Unknown residual {self.residual!r}; expected one of {RESIDUALS}.')
    if self.positions not in POSITIONS:
      raise ValueError(f'Unknown positions {self.positions!r}; expected one of {POSITIONS}.')
    if self.attention_impl not in ('xla', 'einsum'):
      raise ValueError(f"attention_impl must be 'xla' or 'einsum', got {self.attention_impl!r}.")
    if self.qkv_dim % self.num_heads or self.emb_dim % 2:
      raise ValueError('qkv_dim must divide by num_heads and emb_dim must be even.')

  @classmethod
  def from_config(cls, model_config) -> 'ModelConfig':
    """Builds from `config.model`; a missing or unknown field fails here, at start."""
    fields = dict(model_config)
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(fields) - names):
      raise ValueError(f'Unknown config.model fields {unknown}; ModelConfig has {sorted(names)}.')
    if missing := sorted(names - set(fields)):
      raise ValueError(f'config.model lacks fields {missing}.')
    return cls(**fields)

  @property
  def compute_dtype(self):
    """The dtype of activations and matmuls; 'auto' picks bfloat16 where it is fast."""
    return resolve_dtype(self.dtype)


RESIDUALS = ('identity', 'deep_norm', 'rezero')
# 'none' leaves the encoder blind to word order (attention is permutation-invariant); the
# decoder still sees its own prefix length through the causal mask.
POSITIONS = ('sinusoidal', 'none')
DTYPES = ('auto', 'float32', 'bfloat16')


def resolve_dtype(name: str, backend: str | None = None) -> jnp.dtype:
  """'auto' -> bfloat16 on GPU/TPU (their matrix units' native type), float32 on CPU.

  On a CPU bfloat16 is emulated and slower than float32, so 'auto' keeps float32 there.
  """
  if name == 'auto':
    return jnp.dtype(jnp.bfloat16 if (backend or jax.default_backend()) in ('gpu', 'tpu')
                     else jnp.float32)
  return jnp.dtype(name)


def residual_scales(config: ModelConfig, stack: str) -> tuple[float, float]:
  """(alpha, beta): residual scale x*alpha + F(x) and init gain of FFN/value/output weights.

  DeepNorm (Wang et al. 2022, "DeepNet", arXiv:2203.00555, Table 1 / Fig. 2, encoder-decoder
  with N encoder and M decoder layers): encoder alpha = 0.81 (N^4 M)^(1/16),
  beta = 0.87 (N^4 M)^(-1/16); decoder alpha = (3M)^(1/4), beta = (12M)^(-1/4).
  Every other residual form uses (1, 1).
  """
  if config.residual != 'deep_norm':
    return 1.0, 1.0
  n = m = config.num_layers
  if stack == 'encoder':
    return 0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)
  return (3 * m) ** (1 / 4), (12 * m) ** (-1 / 4)


def xavier_uniform(gain: float = 1.0) -> nn.initializers.Initializer:
  """Glorot & Bengio 2010 uniform init, times `gain` (DeepNorm's beta)."""
  return nn.initializers.variance_scaling(gain ** 2, 'fan_avg', 'uniform')


def sinusoidal_positions(positions: Array, dim: int) -> Array:
  """[..., dim] float32 encodings sin(p / 10000^(2i/dim)) | cos(...) (Vaswani et al. 2017, 3.5).

  Sines fill the first half and cosines the second (as tensor2tensor), a fixed permutation of
  the paper's interleaving. Computed from explicit positions so packed rows restart at 0.
  """
  half = dim // 2
  inv_freq = np.exp(-math.log(10_000.0) * np.arange(half) / half).astype(np.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def shift_right(targets: Array, segmentation: Array | None = None) -> Array:
  """Decoder inputs: targets shifted one step right with 0 (BOS) at each segment's start."""
  shifted = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  if segmentation is not None:
    shifted_segments = jnp.pad(segmentation, ((0, 0), (1, 0)))[:, :-1]
    shifted = jnp.where(segmentation == shifted_segments, shifted, 0)
  return shifted


def attention_mask(query_valid: Array, key_valid: Array, query_segments: Array | None = None,
                   key_segments: Array | None = None) -> Array:
  """Boolean [batch, 1, queries, keys]: both real, and in the same packed segment."""
  mask = query_valid[:, None, :, None] & key_valid[:, None, None, :]
  if query_segments is not None:
    mask &= query_segments[:, None, :, None] == key_segments[:, None, None, :]
  return mask


def masked_rms(x: Array, mask: Array | None) -> Array:
  """Root mean square of `x` over real tokens: the activation scale the norm study logs."""
  sq = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1)
  if mask is None:
    return jnp.sqrt(jnp.mean(sq))
  weight = mask.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(sq * weight) / jnp.maximum(jnp.sum(weight), 1.0))


def keep_threshold(rate: float) -> int:
  """The m with uniform(key) < 1 - rate exactly when (bits >> 9) < m, for the same bits.

  jax.random.uniform (float32) turns 32 random bits into (bits >> 9) * 2**-23, exactly, and
  jax.random.bernoulli keeps where that is below float32(1 - rate): that is m = ceil(
  float32(1 - rate) * 2**23), an exact integer comparison on the bits.
  """
  return math.ceil(float(np.float32(1.0 - rate)) * 2 ** 23)


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
  """uint32 random bits of `shape` from a threefry key, as XLA's own Threefry-2x32 op.

  The words are Threefry-2x32 (Salmon et al. 2011) of the key and the counters 0, 1, 2, ...,
  two words a counter, each used once, as jax.random.bits draws them; only their placement
  in `shape` differs (XLA's RngBitGenerator fills the array in its own order). On the CPU,
  JAX lowers its threefry primitive to a rolled loop around the hash, which XLA neither
  unrolls nor fuses; RngBitGenerator is an HLO op that XLA expands into plain elementwise
  ops it compiles itself. Keys of another PRNG implementation take jax.random.bits.
  """
  if str(jax.random.key_impl(key)) != 'threefry2x32':
    return jax.random.bits(key, shape, jnp.uint32)
  # State: the key's two words, then a 64-bit counter starting at 0.
  state = jnp.concatenate([jax.random.key_data(key), jnp.zeros(2, jnp.uint32)])
  _, bits = lax.rng_bit_generator(state, shape, jnp.uint32,
                                  algorithm=lax.RandomAlgorithm.RNG_THREE_FRY)
  return bits


class Dropout(nn.Module):
  """Inverted dropout, as flax's nn.Dropout in distribution, with cheaper random bits.

  Each call draws its own key (make_rng), so masks stay independent across positions,
  layers and steps, and keeps an element with probability exactly float32(1 - rate), as
  nn.Dropout does. Two things are cheaper: the bits come from `random_bits` (XLA's Threefry
  op, not JAX's loop), and the mask compares them with an integer (keep_threshold) instead
  of turning them into uniform floats first: fewer ops for XLA to recompute in the backward
  pass, which reads the bits again rather than a stored mask. The masks are not nn.Dropout's
  masks for the same key (the same words, placed otherwise).
  """
  rate: float

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    bits = random_bits(self.make_rng('dropout'), x.shape)
    keep = lax.shift_right_logical(bits, np.uint32(9)) < np.uint32(keep_threshold(self.rate))
    return lax.select(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _weight_dot(x, kernel, dimension_numbers, precision, preferred_element_type):
  return lax.dot_general(x, kernel, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type)


def _weight_dot_fwd(x, kernel, dimension_numbers, precision, preferred_element_type):
  return _weight_dot(x, kernel, dimension_numbers, precision, preferred_element_type), (x, kernel)


def _weight_dot_bwd(dimension_numbers, precision, preferred_element_type, residuals, g):
  x, kernel = residuals
  g = lax.optimization_barrier(g)
  (x_in, k_in), (x_batch, _) = dimension_numbers
  if x_batch:
    raise NotImplementedError('weight_dot_general has no batch dimensions.')
  _, x_vjp = jax.vjp(lambda x: lax.dot_general(
      x, kernel, dimension_numbers, precision=precision,
      preferred_element_type=preferred_element_type), x)
  (dx,) = x_vjp(g)
  x_rows = [d for d in range(x.ndim) if d not in x_in]
  g_rows = list(range(len(x_rows)))  # dot_general puts x's kept dims first.
  k_out = [d for d in range(kernel.ndim) if d not in k_in]
  x_in_sorted = sorted(x_in)
  # Each kernel dimension, named by the x dimension (in) or kernel dimension (out) it is.
  kernel_dims = [('in', x_in[k_in.index(d)]) if d in k_in else ('out', d)
                 for d in range(kernel.ndim)]
  in_size = math.prod(x.shape[d] for d in x_in)
  out_size = math.prod(kernel.shape[d] for d in k_out)
  if in_size <= out_size:  # x is the narrower operand: it is the one transposed.
    dk = lax.dot_general(x, g, ((x_rows, g_rows), ((), ())), precision=precision,
                         preferred_element_type=preferred_element_type)
    dims = [('in', d) for d in x_in_sorted] + [('out', d) for d in k_out]
  else:
    dk = lax.dot_general(g, x, ((g_rows, x_rows), ((), ())), precision=precision,
                         preferred_element_type=preferred_element_type)
    dims = [('out', d) for d in k_out] + [('in', d) for d in x_in_sorted]
  dk = jnp.transpose(dk, [dims.index(d) for d in kernel_dims])
  return dx, dk.astype(kernel.dtype)


_weight_dot.defvjp(_weight_dot_fwd, _weight_dot_bwd)


def weight_dot_general(x, kernel, dimension_numbers, precision=None,
                       preferred_element_type=None):
  """lax.dot_general(x, kernel) for nn.Dense's `dot_general=`, with a cheaper weight gradient.

  The weight gradient sums over the rows ([batch, length]) of x and of the incoming gradient
  g. XLA:CPU's library (YNNPACK) matmuls take no operand transposed, so XLA copies one of
  the two transposed. JAX's rule always makes it g, and XLA fuses g's producer into that
  copy: dropout's backward (recomputing the mask from the random bits, in transposed
  order) or, for the tied output projection, the whole [rows, vocab] logits gradient. Here
  the narrower of x and g is transposed, and g is first materialized once in its own
  layout (the optimization barrier keeps XLA from fusing its producer into the copy). The
  same sums: the value and dx are unchanged, the weight gradient is the same up to the
  rounding order of the matmul.
  """
  return _weight_dot(x, kernel, dimension_numbers, precision, preferred_element_type)


def _heads_major(x: Array) -> Array:
  """[batch, positions, heads, head_dim] -> [batch, heads, positions, head_dim]."""
  return jnp.swapaxes(x, 1, 2)


class MultiHeadAttention(nn.Module):
  """Scaled dot-product attention over precomputed keys/values, so a cache can supply them.

  `keys_values(x)` projects the memory; `__call__(x, keys, values, mask)` attends. Split this
  way, cross-attention keys/values are computed once per source sentence when decoding.
  """
  config: ModelConfig
  stack: str  # 'encoder' or 'decoder': selects DeepNorm's beta.

  def setup(self):
    cfg = self.config
    _, beta = residual_scales(cfg, self.stack)
    dense = functools.partial(nn.DenseGeneral, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                              dot_general=weight_dot_general)
    heads = (cfg.num_heads, cfg.qkv_dim // cfg.num_heads)
    # DeepNorm scales value and output projections by beta, query and key by 1.
    self.query = dense(heads, kernel_init=xavier_uniform())
    self.key = dense(heads, kernel_init=xavier_uniform())
    self.value = dense(heads, kernel_init=xavier_uniform(beta))
    self.out = dense(cfg.emb_dim, axis=(-2, -1), kernel_init=xavier_uniform(beta))
    self.dropout = Dropout(cfg.attention_dropout_rate)

  def keys_values(self, x: Array) -> tuple[Array, Array]:
    """[batch, keys, emb] -> keys and values, each [batch, keys, heads, head_dim]."""
    return self.key(x), self.value(x)

  def __call__(self, x, keys, values, mask, *, train: bool):
    """x [batch, queries, emb]; mask boolean, broadcastable to [batch, heads, queries, keys]."""
    cfg = self.config
    query = self.query(x)  # [batch, queries, heads, head_dim]
    want_weights = (self.is_mutable_collection('attention_weights')
                    and not self.is_initializing())
    weight_dropout = train and cfg.attention_dropout_rate > 0
    if cfg.attention_impl == 'xla' and not want_weights and not weight_dropout:
      # jax.nn.dot_product_attention cannot drop weights or return them.
      out = jax.nn.dot_product_attention(query, keys, values, mask=mask)
    else:
      out = self._einsum_attention(query, keys, values, mask, train)
    return self.out(out)

  def attend_cached(self, x, keys, values, mask):
    """One decoding position against a cache laid out [batch, heads, keys, head_dim].

    x [batch, 1, emb]; mask boolean, broadcastable to [batch, heads, keys]. The heads-major
    layout lets both contractions run as batched matmuls over (batch, heads) straight from
    the cache: with [batch, keys, heads, head_dim] XLA transposes the whole cache every step.
    """
    query = self.query(x)[:, 0]  # [batch, heads, head_dim]
    scale = query.shape[-1] ** -0.5
    logits = jnp.einsum('bhd,bhkd->bhk', query * scale, keys).astype(jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
    return self.out(jnp.einsum('bhk,bhkd->bhd', weights, values)[:, None])

  def _einsum_attention(self, query, keys, values, mask, train):
    scale = query.shape[-1] ** -0.5
    logits = jnp.einsum('bqhd,bkhd->bhqk', query * scale, keys).astype(jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)  # [batch, heads, queries, keys]
    self.sow('attention_weights', 'weights', weights)
    weights = self.dropout(weights, deterministic=not train).astype(values.dtype)
    return jnp.einsum('bhqk,bkhd->bqhd', weights, values)


class FeedForward(nn.Module):
  """ReLU MLP, emb -> mlp_dim -> emb (Vaswani et al. 2017, 3.3)."""
  config: ModelConfig
  stack: str

  @nn.compact
  def __call__(self, x, *, train: bool):
    cfg = self.config
    _, beta = residual_scales(cfg, self.stack)
    dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                              kernel_init=xavier_uniform(beta), dot_general=weight_dot_general)
    h = nn.relu(dense(cfg.mlp_dim, name='wi')(x))
    h = Dropout(cfg.activation_dropout_rate)(h, deterministic=not train)
    return dense(cfg.emb_dim, name='wo')(h)


class Sublayer(nn.Module):
  """Residual wrapper: the only module that knows the norm placement and residual form.

  post (Vaswani et al. 2017):      norm(alpha * x + g * dropout(F(x)))
  pre (Xiong et al. 2020, 2002.04745): x + g * dropout(F(norm(x)))
  alpha is DeepNorm's (Wang et al. 2022) or 1; g is ReZero's scalar gate initialized to 0
  (Bachlechner et al. 2020, arXiv:2003.04887) or 1. Sows the RMS of the branch F and of the
  output into 'intermediates' when that collection is mutable.
  """
  config: ModelConfig
  stack: str

  @nn.compact
  def __call__(self, x, inner: Callable[[Array], Array], *, mask, train: bool):
    cfg = self.config
    alpha, _ = residual_scales(cfg, self.stack)
    norm = norms.make_norm(cfg, name='norm')
    gate = (self.param('rezero_gate', nn.initializers.zeros, ()).astype(x.dtype)
            if cfg.residual == 'rezero' else 1.0)
    dropout = functools.partial(Dropout(cfg.dropout_rate), deterministic=not train)
    if cfg.norm_position == 'pre':
      branch = inner(norm(x, mask, train))
      out = x * alpha + gate * dropout(branch)
    else:
      branch = inner(x)
      out = norm(x * alpha + gate * dropout(branch), mask, train)
    if self.is_mutable_collection('intermediates') and not self.is_initializing():
      self.sow('intermediates', 'branch_rms', masked_rms(branch, mask))
      self.sow('intermediates', 'output_rms', masked_rms(out, mask))
    return out


class FinalNorm(nn.Module):
  """The norm on a stack's output: needed by pre-LN (Xiong et al. 2020), already done by post."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, mask, train: bool):
    if self.config.norm_position == 'pre':
      return norms.make_norm(self.config, name='norm')(x, mask, train)
    return x


class EncoderLayer(nn.Module):
  """Self-attention then feed-forward, each through a Sublayer."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, *, attention_mask, token_mask, train: bool):
    cfg = self.config
    attention = MultiHeadAttention(cfg, 'encoder', name='self_attention')
    mlp = FeedForward(cfg, 'encoder', name='mlp')
    x = Sublayer(cfg, 'encoder', name='self_attention_add_norm')(
        x, lambda h: attention(h, *attention.keys_values(h), attention_mask, train=train),
        mask=token_mask, train=train)
    return Sublayer(cfg, 'encoder', name='mlp_add_norm')(
        x, functools.partial(mlp, train=train), mask=token_mask, train=train)


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention, feed-forward; a full pass or one cached step."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.self_attention = MultiHeadAttention(cfg, 'decoder')
    self.self_attention_add_norm = Sublayer(cfg, 'decoder')
    self.cross_attention = MultiHeadAttention(cfg, 'decoder')
    self.cross_attention_add_norm = Sublayer(cfg, 'decoder')
    self.mlp = FeedForward(cfg, 'decoder')
    self.mlp_add_norm = Sublayer(cfg, 'decoder')

  def __call__(self, y, encoded, *, self_mask, cross_mask, token_mask, train: bool):
    attend_self = lambda h: self.self_attention(
        h, *self.self_attention.keys_values(h), self_mask, train=train)
    cross_keys_values = self.cross_attention.keys_values(encoded)
    attend_cross = lambda h: self.cross_attention(h, *cross_keys_values, cross_mask, train=train)
    return self._layer(y, attend_self, attend_cross, token_mask, train)

  def init_layer_cache(self, encoded, max_decode_len: int) -> dict[str, Array]:
    """Cross-attention keys/values (computed once) and zeroed self-attention buffers.

    Every leaf is [batch, heads, positions, head_dim], the layout attend_cached reads.
    """
    cross_keys, cross_values = (_heads_major(x) for x in self.cross_attention.keys_values(encoded))
    shape = cross_keys.shape[:2] + (max_decode_len, cross_keys.shape[3])
    zeros = jnp.zeros(shape, cross_keys.dtype)
    return dict(self_keys=zeros, self_values=zeros, cross_keys=cross_keys,
                cross_values=cross_values)

  def step(self, y, cache, *, index, cross_mask):
    """y [batch, 1, emb] at position `index`; returns the output and the updated cache."""
    cache = dict(cache)

    def attend_self(h):
      keys, values = (_heads_major(x) for x in self.self_attention.keys_values(h))
      at = (0, 0, index, 0)
      cache['self_keys'] = jax.lax.dynamic_update_slice(cache['self_keys'], keys, at)
      cache['self_values'] = jax.lax.dynamic_update_slice(cache['self_values'], values, at)
      visible = jnp.arange(cache['self_keys'].shape[2]) <= index  # [max_decode_len]
      return self.self_attention.attend_cached(h, cache['self_keys'], cache['self_values'],
                                               visible[None, None, :])

    attend_cross = lambda h: self.cross_attention.attend_cached(
        h, cache['cross_keys'], cache['cross_values'], cross_mask)
    return self._layer(y, attend_self, attend_cross, None, False), cache

  def _layer(self, y, attend_self, attend_cross, token_mask, train):
    y = self.self_attention_add_norm(y, attend_self, mask=token_mask, train=train)
    y = self.cross_attention_add_norm(y, attend_cross, mask=token_mask, train=train)
    return self.mlp_add_norm(y, functools.partial(self.mlp, train=train), mask=token_mask,
                             train=train)


class Transformer(nn.Module):
  """Encoder-decoder with one embedding shared by source, target and output projection.

  Parameter paths read like the paper: shared_embedding, encoder_layer_{i}/self_attention,
  decoder_layer_{i}/cross_attention, .../mlp, .../mlp_add_norm/norm, encoder_norm (pre-LN).
  """
  config: ModelConfig

  def setup(self):
    cfg = self.config
    # std d^-1/2 so that the sqrt(d)-scaled embeddings have unit scale, like the positions.
    self.shared_embedding = nn.Embed(
        cfg.vocab_size, cfg.emb_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        embedding_init=nn.initializers.normal(stddev=cfg.emb_dim ** -0.5))
    self.embedding_dropout = Dropout(cfg.dropout_rate)
    for i in range(cfg.num_layers):
      setattr(self, f'encoder_layer_{i}', EncoderLayer(cfg))
      setattr(self, f'decoder_layer_{i}', DecoderLayer(cfg))
    self.encoder_norm = FinalNorm(cfg)
    self.decoder_norm = FinalNorm(cfg)

  def _layers(self, stack: str) -> list[nn.Module]:
    return [getattr(self, f'{stack}_layer_{i}') for i in range(self.config.num_layers)]

  def _embed(self, tokens, positions, *, train: bool):
    """Token embedding * sqrt(d) + sinusoidal position, then dropout (Vaswani et al. 3.4).

    With positions='none' the position term is left out (the learner's "how does it know
    word order?" run in the study).
    """
    cfg = self.config
    if tokens.shape[1] > cfg.max_len:
      raise ValueError(f'Length {tokens.shape[1]} exceeds max_len {cfg.max_len}.')
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = self.shared_embedding(tokens) * jnp.sqrt(cfg.emb_dim).astype(cfg.compute_dtype)
    if cfg.positions == 'sinusoidal':
      x = x + sinusoidal_positions(positions, cfg.emb_dim).astype(cfg.compute_dtype)
    return self.embedding_dropout(x, deterministic=not train)

  def _logits(self, y):
    """Output projection by the transposed shared embedding (Press & Wolf 2017); float32.

    The product accumulates and returns float32 whatever the compute dtype, so that in
    bfloat16 the logits (and the softmax and loss after them) keep float32 precision.
    """
    embedding = self.shared_embedding.embedding.astype(y.dtype)  # [vocab, emb]
    return weight_dot_general(y, embedding, (((y.ndim - 1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32)

  def encode(self, inputs, *, inputs_positions=None, inputs_segmentation=None,
             train: bool = False) -> Array:
    """inputs [batch, src_len] int32 -> encoded [batch, src_len, emb] (compute dtype)."""
    token_mask = inputs > 0
    mask = attention_mask(token_mask, token_mask, inputs_segmentation, inputs_segmentation)
    x = self._embed(inputs, inputs_positions, train=train)
    for layer in self._layers('encoder'):
      x = layer(x, attention_mask=mask, token_mask=token_mask, train=train)
    return self.encoder_norm(x, token_mask, train)

  def decode(self, encoded, inputs, targets, *, targets_positions=None,
             inputs_segmentation=None, targets_segmentation=None,
             train: bool = False) -> Array:
    """Teacher-forced logits [batch, tgt_len, vocab] float32 for predicting `targets`."""
    decoder_inputs = shift_right(targets, targets_segmentation)
    # Position i is real when target i is (its input, target i-1 or BOS, always is then).
    token_mask = targets > 0
    causal = jnp.tril(jnp.ones((targets.shape[1],) * 2, bool))
    self_mask = attention_mask(token_mask, token_mask, targets_segmentation,
                               targets_segmentation) & causal
    cross_mask = attention_mask(token_mask, inputs > 0, targets_segmentation,
                                inputs_segmentation)
    y = self._embed(decoder_inputs, targets_positions, train=train)
    for layer in self._layers('decoder'):
      y = layer(y, encoded, self_mask=self_mask, cross_mask=cross_mask,
                token_mask=token_mask, train=train)
    return self._logits(self.decoder_norm(y, token_mask, train))

  def __call__(self, inputs, targets, *, inputs_positions=None, targets_positions=None,
               inputs_segmentation=None, targets_segmentation=None, train: bool) -> Array:
    """inputs [batch, src_len], targets [batch, tgt_len] int32 -> logits [batch, tgt_len, vocab]."""
    encoded = self.encode(inputs, inputs_positions=inputs_positions,
                          inputs_segmentation=inputs_segmentation, train=train)
    return self.decode(encoded, inputs, targets, targets_positions=targets_positions,
                       inputs_segmentation=inputs_segmentation,
                       targets_segmentation=targets_segmentation, train=train)

  def init_cache(self, inputs, max_decode_len: int) -> dict[str, Any]:
    """Runs the encoder once and returns the decoding cache for `inputs` [batch, src_len].

    Leaves: 'index' (scalar int32, the next position), 'source_mask' [batch, src_len] bool,
    and per 'decoder_layer_{i}': 'cross_keys'/'cross_values' [batch, heads, src_len,
    head_dim] computed once, 'self_keys'/'self_values' [batch, heads, max_decode_len,
    head_dim] zeroed. Every non-scalar leaf has the batch first, so beam search can
    repeat/gather along axis 0.
    """
    encoded = self.encode(inputs, train=False)
    layers = {f'decoder_layer_{i}': layer.init_layer_cache(encoded, max_decode_len)
              for i, layer in enumerate(self._layers('decoder'))}
    return dict(index=jnp.zeros((), jnp.int32), source_mask=inputs > 0, layers=layers)

  def decode_step(self, cache, tokens) -> tuple[Array, dict[str, Any]]:
    """tokens [batch] int32 (0 = BOS first) -> (next-token logits [batch, vocab] f32, cache)."""
    index = cache['index']
    positions = jnp.full((tokens.shape[0], 1), index)
    y = self._embed(tokens[:, None], positions, train=False)
    cross_mask = cache['source_mask'][:, None, :]  # [batch, heads, keys] for attend_cached
    layers = {}
    for i, layer in enumerate(self._layers('decoder')):
      name = f'decoder_layer_{i}'
      y, layers[name] = layer.step(y, cache['layers'][name], index=index, cross_mask=cross_mask)
    logits = self._logits(self.decoder_norm(y, None, False))[:, 0]
    return logits, dict(index=index + 1, source_mask=cache['source_mask'], layers=layers)


def make_model(config, *, axis_name: str | None = None) -> Transformer:
  """The Transformer of `config.model`; inside shard_map, BatchNorm all-reduces over `axis_name`."""
  model_config = ModelConfig.from_config(config.model)
  if axis_name and not model_config.batch_norm_axis_name:
    model_config = dataclasses.replace(model_config, batch_norm_axis_name=axis_name)
  return Transformer(model_config)


_FIXED_LAYER_LEAVES = ('cross_keys', 'cross_values')


def split_fixed_cache(cache: dict) -> tuple[dict, dict]:
  """(leaves fixed by the source for the whole search, leaves each step changes).

  The source mask and cross-attention keys/values (Transformer.init_cache) are the
  same for every beam of a sentence, so beam search need not reorder them each step; only
  the step counter and self-attention keys/values travel through the search.
  """
  fixed = {'source_mask': cache['source_mask'], 'layers': {
      name: {k: v for k, v in layer.items() if k in _FIXED_LAYER_LEAVES}
      for name, layer in cache['layers'].items()}}
  changing = {'index': cache['index'], 'layers': {
      name: {k: v for k, v in layer.items() if k not in _FIXED_LAYER_LEAVES}
      for name, layer in cache['layers'].items()}}
  return fixed, changing


def merge_fixed_cache(fixed: dict, changing: dict) -> dict:
  """The inverse of split_fixed_cache."""
  return {'index': changing['index'], 'source_mask': fixed['source_mask'], 'layers': {
      name: {**fixed['layers'][name], **layer} for name, layer in changing['layers'].items()}}


def cache_bytes(config: ModelConfig, *, batch: int, beam: int, source_len: int,
                max_decode_len: int, step: int | None = None) -> int:
  """Bytes of the decoding cache for batch*beam rows (closed formula, see init_cache).

  Per decoder layer: self-attention K and V, 2 * rows * max_decode_len * qkv_dim * itemsize
  (allocated; only `step` positions are used after `step` decode steps), and cross-attention
  K and V, 2 * rows * source_len * qkv_dim * itemsize (fixed by the source). Plus the
  boolean source mask (rows * source_len) and the int32 index (4).
  """
  rows = batch * beam
  itemsize = config.compute_dtype.itemsize
  decoded = max_decode_len if step is None else step
  per_layer = 2 * rows * (decoded + source_len) * config.qkv_dim * itemsize
  return config.num_layers * per_layer + rows * source_len + 4
