"""A PyTorch twin of the post-LN baseline, to time the JAX step against a familiar reference.

Built from torch.nn.TransformerEncoderLayer/DecoderLayer (norm_first=False, batch_first=True),
with what transformer/models.py adds around them: one embedding shared by source, target and
output projection, scaled by sqrt(d); tensor2tensor-order sinusoids (sines then cosines) from
explicit positions, so packed rows restart at 0; dropout after the embeddings; shift_right
with BOS 0 at each packed segment's start; masks that keep attention inside a segment; no
final norm (post-LN has none). `load_flax_params` copies Flax parameters in, so both models
compute the same function (tests/test_torch_twin.py checks the loss to 1e-5).

Only the baseline's architecture is twinned: layer_norm, post, identity residual, qkv_dim =
emb_dim, no R-Drop; anything else raises rather than time a different model.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from transformer import models
from transformer import norms
from transformer import optim

# Finite (not -inf): a padding query masked from every key gets uniform weights, not NaN,
# as with jax.nn.dot_product_attention; its output is never in the loss.
_MASKED = -1e9


def check_twinnable(config: ml_collections.ConfigDict) -> None:
  """Raises unless `config` is the architecture this twin implements."""
  m = config.model
  wanted = dict(norm='layer_norm', norm_position='post', residual='identity')
  if (diff := {k: m[k] for k in wanted if m[k] != wanted[k]}) or m.qkv_dim != m.emb_dim:
    raise ValueError(f'The torch twin is the post-LN baseline with qkv_dim == emb_dim; '
                     f'got {diff or dict(qkv_dim=m.qkv_dim, emb_dim=m.emb_dim)}.')
  if config.r_drop_alpha > 0:
    raise ValueError('The torch twin has no R-Drop.')


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
  """models.sinusoidal_positions in torch: [..., dim], sines in the first half."""
  half = dim // 2
  inv_freq = np.exp(-math.log(10_000.0) * np.arange(half) / half).astype(np.float32)
  angles = positions.float()[..., None] * torch.from_numpy(inv_freq)
  return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def shift_right(targets: torch.Tensor, segmentation: torch.Tensor | None) -> torch.Tensor:
  """models.shift_right in torch: BOS 0 at the start of every row and packed segment."""
  shifted = F.pad(targets, (1, 0))[:, :-1]
  if segmentation is not None:
    shifted_segments = F.pad(segmentation, (1, 0))[:, :-1]
    shifted = torch.where(segmentation == shifted_segments, shifted, 0)
  return shifted


def _allowed(query_valid, key_valid, query_segments, key_segments):
  """Boolean [batch, queries, keys], as models.attention_mask without the head axis."""
  allowed = query_valid[:, :, None] & key_valid[:, None, :]
  if query_segments is not None:
    allowed &= query_segments[:, :, None] == key_segments[:, None, :]
  return allowed


class Transformer(nn.Module):
  """The encoder-decoder of models.Transformer (post-LN), on torch.nn layers."""

  def __init__(self, config: models.ModelConfig):
    super().__init__()
    self.config = c = config
    epsilon = norms.LayerNorm().epsilon
    self.shared_embedding = nn.Embedding(c.vocab_size, c.emb_dim)
    self.embedding_dropout = nn.Dropout(c.dropout_rate)
    layer_args = dict(d_model=c.emb_dim, nhead=c.num_heads, dim_feedforward=c.mlp_dim,
                      dropout=c.dropout_rate, activation='relu', layer_norm_eps=epsilon,
                      batch_first=True, norm_first=False)
    self.encoder_layers = nn.ModuleList(
        nn.TransformerEncoderLayer(**layer_args) for _ in range(c.num_layers))
    self.decoder_layers = nn.ModuleList(
        nn.TransformerDecoderLayer(**layer_args) for _ in range(c.num_layers))
    # torch uses one rate for every dropout of a layer; the Flax model has three.
    for layer in [*self.encoder_layers, *self.decoder_layers]:
      layer.dropout.p = c.activation_dropout_rate  # After the FFN's ReLU.
      for attention in (layer.self_attn, getattr(layer, 'multihead_attn', None)):
        if attention is not None:
          attention.dropout = c.attention_dropout_rate  # On the attention weights.

  def _embed(self, tokens, positions):
    if positions is None:
      positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    x = self.shared_embedding(tokens) * math.sqrt(self.config.emb_dim)
    return self.embedding_dropout(x + sinusoidal_positions(positions, self.config.emb_dim))

  def _head_mask(self, allowed):
    """[batch, q, k] bool -> [batch * heads, q, k] additive float mask (torch's 3-D form)."""
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, _MASKED)
    return mask.repeat_interleave(self.config.num_heads, dim=0)

  def forward(self, inputs, targets, *, inputs_position=None, targets_position=None,
              inputs_segmentation=None, targets_segmentation=None) -> torch.Tensor:
    """int64 inputs [batch, src_len], targets [batch, tgt_len] -> logits [batch, tgt_len, vocab]."""
    source_valid, target_valid = inputs > 0, targets > 0
    length = targets.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    if inputs_segmentation is None and bool(source_valid.all()) and bool(target_valid.all()):
      # Nothing to hide but the future: what a torch user passes for unpadded batches.
      encoder_mask = cross_mask = None
      self_mask = torch.zeros(length, length).masked_fill_(~causal, _MASKED)
    else:
      encoder_mask = self._head_mask(_allowed(source_valid, source_valid, inputs_segmentation,
                                              inputs_segmentation))
      self_mask = self._head_mask(_allowed(target_valid, target_valid, targets_segmentation,
                                           targets_segmentation) & causal)
      cross_mask = self._head_mask(_allowed(target_valid, source_valid, targets_segmentation,
                                            inputs_segmentation))
    x = self._embed(inputs, inputs_position)
    for layer in self.encoder_layers:
      x = layer(x, src_mask=encoder_mask)
    y = self._embed(shift_right(targets, targets_segmentation), targets_position)
    for layer in self.decoder_layers:
      y = layer(y, x, tgt_mask=self_mask, memory_mask=cross_mask)
    return y @ self.shared_embedding.weight.T  # Tied output projection, no bias.


def cross_entropy(logits, targets, label_smoothing: float = 0.0):
  """losses.cross_entropy in torch: (summed KL to the smoothed target, real token count)."""
  vocab = logits.shape[-1]
  confidence, low = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
  log_probs = F.log_softmax(logits.float(), dim=-1)
  # -sum(soft * log_probs) with soft = low everywhere plus (confidence - low) on the label.
  loss = -(confidence - low) * log_probs.gather(-1, targets[..., None])[..., 0]
  if low > 0:
    loss = loss - low * log_probs.sum(-1)
  entropy = -(confidence * math.log(confidence) if confidence > 0 else 0.0)
  if low > 0:
    entropy -= (vocab - 1) * low * math.log(low)
  weights = (targets != 0).float()
  return ((loss - entropy) * weights).sum(), weights.sum()


def _attention_to_torch(p) -> dict[str, np.ndarray]:
  """Flax q/k/v kernels [emb, heads, head_dim] -> torch in_proj [3 * emb, emb] (out x in)."""
  q, k, v = (np.asarray(p[n]['kernel']) for n in ('query', 'key', 'value'))
  emb = q.shape[0]
  out = np.asarray(p['out']['kernel'])  # [heads, head_dim, emb]
  return {
      'in_proj_weight': np.concatenate([w.reshape(emb, -1).T for w in (q, k, v)]),
      'in_proj_bias': np.concatenate([np.asarray(p[n]['bias']).reshape(-1)
                                      for n in ('query', 'key', 'value')]),
      'out_proj.weight': out.reshape(-1, out.shape[-1]).T,
      'out_proj.bias': np.asarray(p['out']['bias']),
  }


def _flax_to_torch_state(params: Any, num_layers: int) -> dict[str, np.ndarray]:
  """The torch state_dict (as NumPy) holding the same numbers as the Flax `params`."""
  state = {'shared_embedding.weight': np.asarray(params['shared_embedding']['embedding'])}

  def add(prefix, tree):
    state.update({f'{prefix}.{k}': v for k, v in tree.items()})

  def norm(p):
    return {'weight': np.asarray(p['norm']['scale']), 'bias': np.asarray(p['norm']['bias'])}

  def mlp(p):
    return {'linear1.weight': np.asarray(p['wi']['kernel']).T,
            'linear1.bias': np.asarray(p['wi']['bias']),
            'linear2.weight': np.asarray(p['wo']['kernel']).T,
            'linear2.bias': np.asarray(p['wo']['bias'])}

  for i in range(num_layers):
    enc, dec = params[f'encoder_layer_{i}'], params[f'decoder_layer_{i}']
    add(f'encoder_layers.{i}.self_attn', _attention_to_torch(enc['self_attention']))
    add(f'encoder_layers.{i}', mlp(enc['mlp']))
    add(f'encoder_layers.{i}.norm1', norm(enc['self_attention_add_norm']))
    add(f'encoder_layers.{i}.norm2', norm(enc['mlp_add_norm']))
    add(f'decoder_layers.{i}.self_attn', _attention_to_torch(dec['self_attention']))
    add(f'decoder_layers.{i}.multihead_attn', _attention_to_torch(dec['cross_attention']))
    add(f'decoder_layers.{i}', mlp(dec['mlp']))
    add(f'decoder_layers.{i}.norm1', norm(dec['self_attention_add_norm']))
    add(f'decoder_layers.{i}.norm2', norm(dec['cross_attention_add_norm']))
    add(f'decoder_layers.{i}.norm3', norm(dec['mlp_add_norm']))
  return state


def load_flax_params(model: Transformer, params: Any) -> None:
  """Copies Flax `params` into `model`; every torch parameter must be set exactly once."""
  state = _flax_to_torch_state(jax.device_get(params), model.config.num_layers)
  missing, unexpected = model.load_state_dict(
      {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()},
      strict=False)
  if missing or unexpected:
    raise ValueError(f'Parameter mapping is off: missing {missing}, unexpected {unexpected}.')


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  """A NumPy batch (input_pipeline keys) as int64 tensors (what nn.Embedding indexes with)."""
  return {k: torch.from_numpy(np.asarray(v)).long() for k, v in batch.items()}


def _forward(model: Transformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
  return model(batch['inputs'], batch['targets'],
               inputs_position=batch.get('inputs_position'),
               targets_position=batch.get('targets_position'),
               inputs_segmentation=batch.get('inputs_segmentation'),
               targets_segmentation=batch.get('targets_segmentation'))


def eval_loss(model: Transformer, batch: dict[str, torch.Tensor]) -> float:
  """Mean unsmoothed cross-entropy per real target token, without dropout."""
  model.eval()
  loss, count = cross_entropy(_forward(model, batch), batch['targets'])
  return (loss / count).item()


class Trainer:
  """Adam (AdamW with the same decay mask, clipping, schedule) as optim.make_optimizer."""

  def __init__(self, model: Transformer, config: ml_collections.ConfigDict):
    self.model, self.config = model, config
    # optim.decay_mask decays Flax leaves of ndim >= 2, which include the q/k/v biases
    # ([heads, head_dim]); here they are the 1-D in_proj_bias.
    decayed = lambda name, p: p.ndim >= 2 or name.endswith('in_proj_bias')
    decay = [p for n, p in model.named_parameters() if decayed(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decayed(n, p)]
    groups = [dict(params=decay, weight_decay=config.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    adam = torch.optim.AdamW if config.weight_decay > 0 else torch.optim.Adam
    self.optimizer = adam(groups, lr=config.learning_rate, betas=(config.adam_b1, config.adam_b2),
                          eps=config.adam_eps, fused=True)  # One kernel, as XLA fuses optax.
    schedule = optim.make_schedule(config)
    # The rate of every update up front: no JAX call inside the timed step.
    self.rates = np.asarray(jax.vmap(schedule)(jnp.arange(config.num_train_steps)))
    self.count = 0

  def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimizer step on `batch`; returns the (detached) mean loss."""
    self.model.train()
    for group in self.optimizer.param_groups:
      group['lr'] = float(self.rates[min(self.count, len(self.rates) - 1)])
    self.optimizer.zero_grad(set_to_none=True)
    loss, count = cross_entropy(_forward(self.model, batch), batch['targets'],
                                self.config.label_smoothing)
    loss = loss / count
    loss.backward()
    if self.config.grad_clip_norm > 0:
      nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
    self.optimizer.step()
    self.count += 1
    return loss.detach()
