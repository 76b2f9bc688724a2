"""Model FLOPs of a training step, counted from the architecture (for MFU).

Convention: 2 FLOPs per multiply-accumulate, matrix products only. Embedding lookups, position
encodings, biases, norms, softmax, dropout, the loss and the optimizer are left out (they are
a few percent at these sizes). Attention is counted over every query-key pair of the padded
[length x length] block, causal or padded or not, because that is what the step computes.
The backward pass costs twice the forward (one product for the input gradient, one for the
weight gradient), so a step is 3x the forward (Kaplan et al. 2020, arXiv:2001.08361, 2.1).
"""

import ml_collections

from transformer import input_pipeline
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


def config_step_flops(config: ml_collections.ConfigDict) -> float:
  """train_step_flops of a run's config: every row of its optimizer step (all micro-batches),
  twice for R-Drop, which runs the model twice a step."""
  rows = input_pipeline.micro_batch_rows(config) * config.grad_accum_steps
  step = train_step_flops(models.ModelConfig.from_config(config.model), batch=rows,
                          source_len=config.max_length, target_len=config.max_target_length)
  return step * (2 if config.r_drop_alpha > 0 else 1)


def decode_flops(config: models.ModelConfig, *, batch: int, beam: int, source_len: int,
                 steps: int) -> float:
  """Model FLOPs of a KV-cached search of `steps` output tokens for `batch` sentences of
  `source_len` tokens, each with `beam` hypotheses: the least a decoder must compute.

  The encoder and the cross-attention's keys and values run once per sentence; every step
  feeds one token per hypothesis through the decoder, whose self-attention reads only the
  prefix so far (t keys at step t, not the whole cache). A real search computes more (a
  fixed-size cache, the top-k), so time = decode_flops / matmul peak is a floor on any
  decoder's time (benchmarks.peer_decode).
  """
  rows, layers, d, h = batch * beam, config.num_layers, config.emb_dim, config.qkv_dim
  per_row = forward_flops(config, batch=rows, source_len=source_len, target_len=steps)
  per_sentence = forward_flops(config, batch=batch, source_len=source_len, target_len=steps)
  mac = lambda count, fan_in, fan_out: 2.0 * count * fan_in * fan_out
  # forward_flops counts the [steps x steps] block of scores; a search reads the prefix.
  self_scores = layers * 2 * mac(rows * steps, steps, h)
  prefix_scores = layers * 2 * mac(rows, steps * (steps + 1) / 2, h)
  # Cross-attention keys and values: once per sentence, not once per hypothesis.
  cross_kv = lambda count: layers * 2 * mac(count * source_len, d, h)
  return (per_sentence['encoder_self_attention'] + per_sentence['encoder_ffn'] +
          per_row['decoder_self_attention'] - self_scores + prefix_scores +
          per_row['decoder_cross_attention'] - cross_kv(rows) + cross_kv(batch) +
          per_row['decoder_ffn'] + per_row['output_projection'])
