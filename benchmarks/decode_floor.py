"""The least time an XLA decoder can take on this machine: a search's weight products alone.

flops.decode_flops at the peak of a large matmul is a floor that no decoder approaches,
because a decoding step multiplies 16-64 rows, not 2,048. This floor keeps the real shapes:
one jitted program that does, for every output token, only the products with weights that a
KV-cached decoder step cannot skip, at their real sizes, in XLA's own loop:

- per decoder layer: the fused q/k/v projection (d -> 3h, the cheapest form), the
  self-attention's output (h -> d), the cross-attention's query and output, the FFN's two;
- then the output projection onto the whole vocabulary;
- once per batch, not per token: the encoder's products and each layer's cross-attention
  keys and values (d -> 2h, one row per source token, not per hypothesis).

It leaves out everything else a decoder must do: attention over the cache, norms, softmax,
the search's top-k and bookkeeping, embedding lookups. So no decoder compiled by XLA here
can be faster than it, and peer time / this floor is the most that any such decoder could
gain over the peer (benchmarks.peer_decode prints it beside the FLOP floor).
"""

from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

from benchmarks import machine
from transformer import models


def _weight(key, fan_in: int, fan_out: int, layers: int = 0) -> jax.Array:
  """Variance-preserving random weights: values that neither overflow nor become denormals
  (which are slow on a CPU) after hundreds of chained products."""
  shape = (layers, fan_in, fan_out) if layers else (fan_in, fan_out)
  return jax.random.normal(key, shape, jnp.float32) / jnp.sqrt(fan_in)


def weights(config: models.ModelConfig, seed: int = 0) -> dict[str, jax.Array]:
  d, h, f, v, layers = (config.emb_dim, config.qkv_dim, config.mlp_dim, config.vocab_size,
                        config.num_layers)
  shapes = {
      'encoder_qkv': (d, 3 * h), 'encoder_out': (h, d), 'encoder_ffn_in': (d, f),
      'encoder_ffn_out': (f, d), 'cross_kv': (d, 2 * h),
      'qkv': (d, 3 * h), 'out': (h, d), 'cross_q': (d, h), 'cross_out': (h, d),
      'ffn_in': (d, f), 'ffn_out': (f, d),
  }
  keys = jax.random.split(jax.random.key(seed), len(shapes) + 1)
  out = {name: _weight(key, *shape, layers) for key, (name, shape) in zip(keys, shapes.items())}
  out['vocabulary'] = _weight(keys[-1], d, v)
  return out


def products(config: models.ModelConfig, *, beam: int, steps: int, unroll: bool = False
             ) -> Callable[[dict, jax.Array], jax.Array]:
  """(weights, encoder input [batch, source_len, d]) -> [batch * beam, d]: the products a
  search of `steps` tokens with `beam` hypotheses per sentence cannot skip, chained so that
  XLA can neither drop nor hoist any of them."""
  h, layers = config.qkv_dim, config.num_layers

  def encode(w, x):
    batch, source_len, d = x.shape
    x = x.reshape(batch * source_len, d)
    keys_values = []
    for layer in range(layers):
      x = (x @ w['encoder_qkv'][layer])[:, :h] @ w['encoder_out'][layer]
      x = (x @ w['encoder_ffn_in'][layer]) @ w['encoder_ffn_out'][layer]
    for layer in range(layers):
      keys_values.append(x @ w['cross_kv'][layer])
    # The first row of each sentence, over its beam, starts the search; the keys and values
    # feed it through a sum, so that none is dead code.
    start = jnp.repeat(x.reshape(batch, source_len, d)[:, 0], beam, axis=0)
    return start + sum(jnp.mean(kv) for kv in keys_values)

  def run(w, x):
    def step(_, x):
      for layer in range(layers):
        x = (x @ w['qkv'][layer])[:, :h] @ w['out'][layer]
        x = (x @ w['cross_q'][layer]) @ w['cross_out'][layer]
        x = (x @ w['ffn_in'][layer]) @ w['ffn_out'][layer]
      return (x @ w['vocabulary'])[:, :x.shape[1]]  # The next token's input, [rows, d].

    return lax.fori_loop(0, steps, step, encode(w, x), unroll=unroll)

  return run


def seconds(config: models.ModelConfig, *, batch: int, beam: int, source_len: int, steps: int,
            repeats: int = 3) -> float:
  """The best of `repeats` timed runs of `products` (compiled first) for one batch."""
  x = jax.random.normal(jax.random.key(1), (batch, source_len, config.emb_dim), jnp.float32)
  return machine.best_seconds(jax.jit(products(config, beam=beam, steps=steps)),
                              weights(config), x, repeats=repeats)
