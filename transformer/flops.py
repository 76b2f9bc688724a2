"""Model FLOPs of a training step, counted from the architecture (for MFU).

Convention: 2 FLOPs per multiply-accumulate, matrix products only. Embedding lookups, position
encodings, biases, norms, softmax, dropout, the loss and the optimizer are left out (they are
a few percent at these sizes). Attention is counted over every query-key pair of the padded
[length x length] block, causal or padded or not, because that is what the step computes.
The backward pass costs twice the forward (one product for the input gradient, one for the
weight gradient), so a step is 3x the forward (Kaplan et al. 2020, arXiv:2001.08361, 2.1).
"""

from transformer import models


def forward_flops(config: models.ModelConfig, *, batch: int, source_len: int,
                  target_len: int) -> dict[str, float]:
  """Forward FLOPs of one [batch, source_len] -> [batch, target_len] pass, by part."""
  d, h, f, v = config.emb_dim, config.qkv_dim, config.mlp_dim, config.vocab_size
  layers, s, t = config.num_layers, source_len, target_len
  mac = lambda tokens, fan_in, fan_out: 2.0 * batch * tokens * fan_in * fan_out
  ffn = lambda tokens: mac(tokens, d, f) + mac(tokens, f, d)
  # Q, K, V projections d -> h and the output projection h -> d.
  projections = lambda q_tokens, kv_tokens: 2 * mac(q_tokens, d, h) + 2 * mac(kv_tokens, d, h)
  # QK^T and AV: per query, per key, h MACs each.
  scores = lambda q_tokens, kv_tokens: 2 * mac(q_tokens, kv_tokens, h)
  return {
      'encoder_self_attention': layers * (projections(s, s) + scores(s, s)),
      'encoder_ffn': layers * ffn(s),
      'decoder_self_attention': layers * (projections(t, t) + scores(t, t)),
      'decoder_cross_attention': layers * (projections(t, s) + scores(t, s)),
      'decoder_ffn': layers * ffn(t),
      'output_projection': mac(t, d, v),  # The tied embedding, over the whole vocabulary.
  }


def train_step_flops(config: models.ModelConfig, *, batch: int, source_len: int,
                     target_len: int) -> float:
  """Forward + backward model FLOPs of one optimizer step (3x the forward)."""
  return 3.0 * sum(forward_flops(config, batch=batch, source_len=source_len,
                                 target_len=target_len).values())
