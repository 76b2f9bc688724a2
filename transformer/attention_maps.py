"""Attention heatmaps of one sentence: what each head of a trained model looks at.

The sentence is translated greedily, then the model runs once teacher-forced on the source
and that translation with the 'attention_weights' collection mutable (see models.py), so
the maps are those of the exact forward pass that scores the translation. One PNG per
(kind, layer, head), tokens as sentencepiece pieces on the axes. Decoder rows are labelled
by the token fed at that position (BOS first), which is the previous output token.
"""

import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from transformer import plots
from transformer import translator as translator_lib

BOS_PIECE = '<s>'  # The decoder's start token is the pad id; shown under this name.
KINDS = ('encoder_self', 'decoder_self', 'cross')
# (kind, stack, module) of every sown attention in models.py.
_SOWN = (('encoder_self', 'encoder', 'self_attention'),
         ('decoder_self', 'decoder', 'self_attention'),
         ('cross', 'decoder', 'cross_attention'))


def attention_weights(model, variables, source_ids: Sequence[int],
                      target_ids: Sequence[int]) -> dict[str, np.ndarray]:
  """{kind: float32 [layers, heads, queries, keys]} for one teacher-forced pair.

  `source_ids` and `target_ids` both end with eos; the decoder's queries are its inputs,
  BOS followed by target_ids[:-1].
  """
  inputs = jnp.asarray([source_ids], jnp.int32)
  targets = jnp.asarray([target_ids], jnp.int32)
  _, state = model.apply(variables, inputs, targets, train=False, mutable=['attention_weights'])
  sown = state['attention_weights']
  out = {}
  for kind, stack, module in _SOWN:
    layers = [sown[f'{stack}_layer_{i}'][module]['weights'][0][0]  # [heads, queries, keys]
              for i in range(model.config.num_layers)]
    out[kind] = np.stack([np.asarray(w, np.float32) for w in layers])
  return out


def translate_one(translator: translator_lib.BatchTranslator, variables, tokenizer, sentence: str,
                  search: translator_lib.SearchConfig) -> tuple[list[int], list[int]]:
  """(source ids, greedy output ids), each ending with eos, as decode.py would make them."""
  if not sentence.strip():
    raise ValueError('The attention sentence is empty.')
  source = translator.encode_sources([sentence])[0]
  greedy = translator_lib.SearchConfig(**{**search.__dict__, 'beam_size': 1})
  output = translator.translate_ids(variables, [source], greedy)[0]
  return source, output + [tokenizer.eos_id]


def read_sentence(model, variables, tokenizer, sentence: str,
                  search: translator_lib.SearchConfig = translator_lib.SearchConfig(),
                  ) -> tuple[list[int], list[int], dict[str, np.ndarray]]:
  """(source ids, greedy output ids, attention_weights) of one sentence."""
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=1)
  source, target = translate_one(translator, variables, tokenizer, sentence, search)
  return source, target, attention_weights(model, variables, source, target)


def draw_maps(tokenizer, source: Sequence[int], target: Sequence[int],
              weights: dict[str, np.ndarray], out_dir: str) -> list[str]:
  """Writes `out_dir/{kind}_layer{l}_head{h}.png` from read_sentence's output; the paths."""
  pieces = lambda ids: [tokenizer.processor.id_to_piece(int(i)) for i in ids]
  source_pieces = pieces(source)
  decoder_pieces = [BOS_PIECE] + pieces(target[:-1])
  axes = {'encoder_self': (source_pieces, source_pieces),
          'decoder_self': (decoder_pieces, decoder_pieces),
          'cross': (source_pieces, decoder_pieces)}  # (keys, queries)
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  translation = tokenizer.decode(list(target[:-1]))
  for kind in KINDS:
    keys, queries = axes[kind]
    for layer, heads in enumerate(weights[kind]):
      for head, matrix in enumerate(heads):
        paths.append(plots.plot_attention(
            matrix, keys, queries, os.path.join(out_dir, f'{kind}_layer{layer}_head{head}.png'),
            title=f'{kind} attention, layer {layer}, head {head}\n{translation[:80]}'))
  return paths


def write_attention_maps(model, variables, tokenizer, sentence: str, out_dir: str, *,
                         search: translator_lib.SearchConfig = translator_lib.SearchConfig(),
                         ) -> tuple[list[str], dict[str, np.ndarray]]:
  """Writes `out_dir/{kind}_layer{l}_head{h}.png`; returns the paths and the weights."""
  source, target, weights = read_sentence(model, variables, tokenizer, sentence, search)
  return draw_maps(tokenizer, source, target, weights, out_dir), weights
