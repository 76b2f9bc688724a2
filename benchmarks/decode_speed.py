r"""Decoding speed with the KV cache against a decoder that recomputes every step.

  python -m benchmarks.decode_speed                      # random init, small config
  python -m benchmarks.decode_speed --workdir=DIR        # a trained workdir's model

Translates the first --num_sentences of the Bible test split in one batch (padded to the
longest), greedy and beam 4, each search two ways, through the same search.py searches:

* kv-cache: models.Transformer.decode_step, one new position per step;
* no-cache: the full teacher-forced decoder (model.decode) over all max_decode_len
  positions at every step, reading the logits at the current one. The encoder still runs
  once, so the difference is the cost of recomputing the decoder prefix.

Each program is compiled before it is timed, and the best of --repeats runs is reported.
Prints a table and the machine. A randomly initialized model seldom emits eos, so it
decodes to the length limit (the worst case); a trained one stops earlier.
"""

import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from benchmarks import machine
from transformer import inference
from transformer import input_pipeline
from transformer import models
from transformer import search as search_lib
from transformer import translator as translator_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'baseline.py') + ':small',
    'Config of the randomly initialized model (ignored with --workdir).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (default: random init).')
_NUM_SENTENCES = flags.DEFINE_integer('num_sentences', 8, 'Test sentences, one batch.')
_BEAM_SIZES = flags.DEFINE_list('beam_sizes', ['1', '4'], 'Beam widths (1 = greedy).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed runs of each program; the best is kept.')


def no_cache_decoder(model, variables, inputs, max_decode_len: int):
  """(step_fn, state) with search.py's interface that reruns the whole decoder each step.

  The state holds the tokens fed so far ([rows, max_decode_len], BOS first) instead of
  keys and values; step `index` writes its token there and runs model.decode on targets
  that are those tokens shifted left, a non-pad placeholder at `index` and padding after.
  """
  encoded = model.apply(variables, inputs, method=model.encode)
  state = dict(index=jnp.zeros((), jnp.int32), inputs=inputs, encoded=encoded,
               fed=jnp.zeros((inputs.shape[0], max_decode_len), jnp.int32))

  def step_fn(tokens, state):
    index = state['index']
    fed = state['fed'].at[:, index].set(tokens)
    positions = jnp.arange(max_decode_len)
    targets = jnp.where(positions < index, jnp.roll(fed, -1, axis=1),
                        jnp.where(positions == index, 1, 0))  # 1: any non-pad id.
    logits = model.apply(variables, state['encoded'], state['inputs'], targets,
                         method=model.decode)  # [rows, max_decode_len, vocab]
    logits = jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False)
    return logits, dict(state, index=index + 1, fed=fed)

  return step_fn, state


def search_fn(model, *, beam_size: int, cached: bool, max_decode_len: int, length_ratio: float,
              length_offset: int, length_penalty: float):
  """A jitted (variables, inputs) -> tokens [batch, max_decode_len] for one setting."""

  def run(variables, inputs):
    batch = inputs.shape[0]
    if cached:
      state = model.apply(variables, inputs, max_decode_len, method=model.init_cache)
      step_fn = lambda tokens, cache: model.apply(variables, cache, tokens,
                                                   method=model.decode_step)
    else:
      step_fn, state = no_cache_decoder(model, variables, inputs, max_decode_len)
    max_lengths = jnp.minimum(jnp.ceil(
        length_ratio * jnp.sum(inputs > 0, axis=1) + length_offset).astype(jnp.int32),
                              max_decode_len)
    if beam_size == 1:
      return search_lib.greedy_search(step_fn, state, batch_size=batch,
                                    max_decode_len=max_decode_len, max_lengths=max_lengths)
    sequences, _ = search_lib.beam_search(
        step_fn, state, batch_size=batch, beam_size=beam_size, max_decode_len=max_decode_len,
        max_lengths=max_lengths, length_penalty=length_penalty)
    return sequences[:, 0]

  return jax.jit(run)


def load_model(workdir):
  """(config, tokenizer, model, variables, description)."""
  if workdir:
    config, tokenizer, model, variables, step = inference.load_trained(workdir)
    # Restored on the training mesh; this benchmark runs plain jit on one device.
    variables = jax.device_get(variables)
    return config, tokenizer, model, variables, f'{workdir} (step {step})'
  config = _CONFIG.value
  tokenizer = input_pipeline.prepare(config)
  model = models.make_model(config)
  dummy = jnp.ones((1, 8), jnp.int32)
  variables = model.init(jax.random.key(config.seed), dummy, dummy, train=False)
  return config, tokenizer, model, variables, f'random init, {config.scale} config'


def main(argv):
  del argv
  config, tokenizer, model, variables, description = load_model(_WORKDIR.value)
  pairs = input_pipeline.load_pairs(config, 'test')[:_NUM_SENTENCES.value]
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=len(pairs))
  sources = translator.encode_sources([fr for fr, _ in pairs])
  source_len = translator_lib.bucket_length(max(map(len, sources)), model.config.max_len)
  inputs = np.zeros((len(sources), source_len), np.int32)
  for row, ids in enumerate(sources):
    inputs[row, :len(ids)] = ids
  inputs = jnp.asarray(inputs)
  search = translator_lib.SearchConfig.from_config(config)
  max_decode_len = translator.max_decode_len(search, source_len)

  for key, value in {**machine.describe(),
                     'jax.devices()': jax.devices()}.items():
    print(f'{key}: {value}')
  print(f'Model: {description}; {model.config.num_layers} layers, d_model '
        f'{model.config.emb_dim}, vocab {model.config.vocab_size}')
  print(f'{len(sources)} test sentences in one batch, source padded to {source_len}, '
        f'max_decode_len {max_decode_len}')
  print(f'{"search":<8} {"decoder":<9} {"compile s":>9} {"best s":>8} {"sent/s":>8} '
        f'{"tokens/s":>9} {"tokens":>7} {"speed-up":>8}')
  for beam_size in map(int, _BEAM_SIZES.value):
    outputs, seconds = {}, {}
    for cached in (True, False):
      fn = search_fn(model, beam_size=beam_size, cached=cached, max_decode_len=max_decode_len,
                     length_ratio=search.length_ratio, length_offset=search.length_offset,
                     length_penalty=search.length_penalty)
      start = time.perf_counter()
      compiled = fn.lower(variables, inputs).compile()
      compile_seconds = time.perf_counter() - start
      times = []
      for _ in range(_REPEATS.value):
        start = time.perf_counter()
        tokens = np.asarray(jax.block_until_ready(compiled(variables, inputs)))
        times.append(time.perf_counter() - start)
      seconds[cached] = min(times)
      outputs[cached] = tokens
      num_tokens = int(np.sum(tokens > 0))  # Output tokens, eos included.
      name = 'greedy' if beam_size == 1 else f'beam {beam_size}'
      speed_up = '' if cached else f'{seconds[False] / seconds[True]:.1f}x'
      print(f'{name:<8} {"kv-cache" if cached else "no-cache":<9} {compile_seconds:>9.1f} '
            f'{seconds[cached]:>8.2f} {len(sources) / seconds[cached]:>8.2f} '
            f'{num_tokens / seconds[cached]:>9.1f} {num_tokens:>7} {speed_up:>8}')
    same = np.mean(np.all(outputs[True] == outputs[False], axis=1))
    print(f'  {same:.0%} of the sentences decode to the same tokens both ways.')


if __name__ == '__main__':
  app.run(main)
