r"""Our decoder against the Flax examples/wmt decoder, one after the other on one machine.

  python -m benchmarks.peer_decode --workdir=DIR [--num_sentences=64] [--beam_sizes=1,4]

The peer's code is not in this repository: its `models.py` and `decode.py` come from the
flax source distribution on the package registry (`pip download --no-binary :all: --no-deps
flax==<installed version>`), cached in --peer_cache outside the repository and imported from
there at run time. The glue that runs them (encode once, tile the encoding over the beam, a
`tokens -> logits` closure over the `cache` collection, `decode.beam_search`) follows what the
example's own `predict_step` does; beam 1 of the peer's beam search stands for its greedy.

Both decoders get the same model size (the workdir's: layers, widths, heads, vocabulary; the
peer's parameters are a fresh random init, since its post-/pre-LN layout differs from ours),
the same test sentences in the same batches (sorted by length, padded to our buckets), the
same beam and the same length limit (--max_decode_len output tokens). Each program is
compiled before the timed pass. A model that seldom says eos decodes to the limit, so the
table also gives output tokens and time per output token.

The floor row is what no decoder can beat here: the search's model FLOPs (flops.decode_flops:
the encoder once, one token per hypothesis per step over the prefix, every batch decoded to
the limit, padded rows included) at the measured peak of a large float32 matmul on this
machine, which small decoding matmuls never reach. peer / floor is the most any decoder could
gain over the peer on this machine at this size. The products row is a tighter floor for any
decoder XLA compiles (benchmarks.decode_floor): the weight products a search cannot skip, at
their real 16-64-row shapes, timed alone in one jitted loop per batch, with no attention,
norm, softmax or search.
"""

import glob
import importlib.util
import os
import subprocess
import sys
import tarfile
import time

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import decode_floor
from benchmarks import machine
from transformer import datasets
from transformer import flops
from transformer import inference
from transformer import translator as translator_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (ours).', required=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_NUM_SENTENCES = flags.DEFINE_integer('num_sentences', 64, 'Test sentences decoded.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Sentences a batch, both decoders.')
_BEAM_SIZES = flags.DEFINE_list('beam_sizes', ['1', '4'], 'Beam widths (1 = greedy).')
_MAX_DECODE_LEN = flags.DEFINE_integer('max_decode_len', 64, 'Output tokens at most, both.')
_ENSEMBLE = flags.DEFINE_integer('ensemble', 1, 'Also time our ensemble of K copies (K > 1).')
_PEER_CACHE = flags.DEFINE_string(
    'peer_cache', os.path.expanduser('~/.cache/peer_flax'), 'Where the flax sdist is kept.')

EOS_ID = 1


def peer_modules(cache_dir: str, version: str):
  """(models, decode) of flax's examples/wmt, imported from the cached source distribution."""
  folder = os.path.join(cache_dir, f'flax-{version}', 'examples', 'wmt')
  if not os.path.exists(os.path.join(folder, 'decode.py')):
    os.makedirs(cache_dir, exist_ok=True)
    archives = glob.glob(os.path.join(cache_dir, f'flax-{version}.tar.gz'))
    if not archives:
      subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-binary', ':all:',
                      '--no-deps', f'flax=={version}', '-d', cache_dir], check=True)
      archives = glob.glob(os.path.join(cache_dir, f'flax-{version}.tar.gz'))
    prefix = f'flax-{version}/examples/wmt/'
    with tarfile.open(archives[0]) as archive:
      archive.extractall(cache_dir, members=[m for m in archive.getmembers()
                                             if m.name.startswith(prefix)], filter='data')
  loaded = []
  for name in ('models', 'decode'):
    spec = importlib.util.spec_from_file_location(f'peer_wmt_{name}',
                                                  os.path.join(folder, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded.append(module)
  return tuple(loaded)


def peer_decoder(models, decode, ours, *, beam_size: int, max_decode_len: int):
  """(params, jitted (params, inputs) -> best sequences) of the peer at our model's size."""
  cfg = ours.config
  config = models.TransformerConfig(
      vocab_size=cfg.vocab_size, output_vocab_size=cfg.vocab_size, share_embeddings=True,
      logits_via_embedding=True, emb_dim=cfg.emb_dim, num_heads=cfg.num_heads,
      num_layers=cfg.num_layers, qkv_dim=cfg.qkv_dim, mlp_dim=cfg.mlp_dim, max_len=cfg.max_len,
      dropout_rate=0.0, attention_dropout_rate=0.0, deterministic=True)
  decoding = config.replace(decode=True)
  dummy = jnp.ones((1, 8), jnp.int32)
  params = models.Transformer(config).init(jax.random.key(0), dummy, dummy)['params']
  length = max_decode_len + 1  # The peer's position 0 is a dummy token.

  def run(params, inputs):
    encoded = models.Transformer(config).apply({'params': params}, inputs,
                                               method=models.Transformer.encode)
    encoded = decode.flat_batch_beam_expand(encoded, beam_size)
    raw_inputs = decode.flat_batch_beam_expand(inputs, beam_size)
    shapes = jax.eval_shape(lambda: models.Transformer(decoding).init(
        jax.random.key(0), inputs, jnp.ones((inputs.shape[0], length), jnp.int32))['cache'])
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def tokens_to_logits(flat_ids, flat_cache):
      logits, new_vars = models.Transformer(decoding).apply(
          {'params': params, 'cache': flat_cache}, encoded, raw_inputs, flat_ids,
          mutable=['cache'], method=models.Transformer.decode)
      # As ours (translator.py): the pad id is never an output.
      return logits.squeeze(axis=1).at[:, 0].set(-jnp.inf), new_vars['cache']

    sequences, _ = decode.beam_search(inputs, cache, tokens_to_logits, beam_size=beam_size,
                                      alpha=0.6, eos_id=EOS_ID, max_decode_len=length)
    return sequences[:, -1, 1:]  # Best last; drop the dummy.

  return params, jax.jit(run)


def batches(sources, batch_size: int, max_len: int) -> list[np.ndarray]:
  """The batches Translator.search_ids makes: sorted by length, the shortest sentence left
  picks the bucket, and the batch takes the next sentences that fit it."""
  order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
  out, start = [], 0
  while start < len(order):
    bucket = translator_lib.bucket_length(len(sources[order[start]]), max_len)
    chunk = [sources[i] for i in order[start:start + batch_size] if len(sources[i]) <= bucket]
    rows = np.zeros((batch_size, bucket), np.int32)
    for row, ids in enumerate(chunk):
      rows[row, :len(ids)] = ids
    out.append(rows)
    start += len(chunk)
  return out


def output_tokens(sequences) -> int:
  """Tokens up to and including the first eos (all of the row without one), summed."""
  total = 0
  for row in np.asarray(sequences).reshape(-1, np.shape(sequences)[-1]):
    ends = np.flatnonzero(row == EOS_ID)
    total += ends[0] + 1 if len(ends) else len(row)
  return int(total)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  models, decode = peer_modules(_PEER_CACHE.value, flax.__version__)
  loaded = inference.load_trained(_WORKDIR.value, _CHECKPOINT.value)
  config, tokenizer, model, step = loaded.config, loaded.tokenizer, loaded.model, loaded.step
  variables = jax.device_get(loaded.variables)
  pairs = datasets.load_pairs(config, 'test')[:_NUM_SENTENCES.value]
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=_BATCH_SIZE.value)
  sources = translator.encode_sources([fr for fr, _ in pairs])
  peer_batches = batches(sources, translator.batch_size, model.config.max_len)
  sentences_per_batch = [int(np.sum(np.any(b > 0, axis=1))) for b in peer_batches]
  limit = _MAX_DECODE_LEN.value

  print(f'Ours: {_WORKDIR.value} (step {step}); peer: flax {flax.__version__} examples/wmt, '
        'random init at the same size')
  print(f'd_model {model.config.emb_dim}, FFN {model.config.mlp_dim}, {model.config.num_layers}'
        f'+{model.config.num_layers} layers, {model.config.num_heads} heads, vocab '
        f'{model.config.vocab_size}; {len(sources)} test sentences in batches of '
        f'{translator.batch_size}, at most {limit} output tokens')
  for key, value in machine.describe().items():
    print(f'  {key:12s} {value}')
  peak = machine.measured_matmul_peak()
  print(f'  matmul peak  {peak / 1e9:,.1f} GFLOP/s (float32, measured now)')
  print(f'{"search":<8} {"decoder":<14} {"seconds":>8} {"tokens":>7} {"ms/token":>9} '
        f'{"peer/this":>9} {"per token":>9}')
  for beam_size in map(int, _BEAM_SIZES.value):
    search = translator_lib.SearchConfig(beam_size=beam_size, max_decode_len=limit,
                                         length_penalty=0.6)
    params, peer = peer_decoder(models, decode, model, beam_size=beam_size, max_decode_len=limit)
    for shape in {b.shape for b in peer_batches}:  # Compile every shape first.
      jax.block_until_ready(peer(params, np.zeros(shape, np.int32)))
    start = time.perf_counter()
    peer_tokens = sum(output_tokens(jax.device_get(peer(params, b))[:real])
                      for b, real in zip(peer_batches, sentences_per_batch))
    peer_seconds = time.perf_counter() - start

    rows = []
    for size in sorted({1, _ENSEMBLE.value}):
      ensemble = translator_lib.BatchTranslator([model] * size, tokenizer,
                                           batch_size=_BATCH_SIZE.value)
      members = [variables] * size
      ensemble.translate_ids(members, sources, search)  # Compiles every bucket.
      start = time.perf_counter()
      found = ensemble.translate_ids(members, sources, search)
      seconds = time.perf_counter() - start
      rows.append(('ours' if size == 1 else f'ours x{size}', seconds,
                   sum(len(ids) + 1 for ids in found)))
    name = 'greedy' if beam_size == 1 else f'beam {beam_size}'
    floor = sum(flops.decode_flops(model.config, batch=b.shape[0], beam=beam_size,
                                   source_len=b.shape[1], steps=limit)
                for b in peer_batches) / peak
    print(f'{name:<8} {"floor":<14} {floor:>8.2f} {"":>7} {"":>9} {peer_seconds / floor:>8.2f}x')
    products = sum(decode_floor.seconds(model.config, batch=b.shape[0], beam=beam_size,
                                        source_len=b.shape[1], steps=limit)
                   for b in peer_batches)
    print(f'{name:<8} {"products":<14} {products:>8.2f} {"":>7} {"":>9} '
          f'{peer_seconds / products:>8.2f}x')
    print(f'{name:<8} {"flax wmt":<14} {peer_seconds:>8.2f} {peer_tokens:>7} '
          f'{1e3 * peer_seconds / peer_tokens:>9.2f}')
    for label, seconds, tokens in rows:
      print(f'{name:<8} {label:<14} {seconds:>8.2f} {tokens:>7} {1e3 * seconds / tokens:>9.2f} '
            f'{peer_seconds / seconds:>8.2f}x '
            f'{(peer_seconds / peer_tokens) / (seconds / tokens):>8.2f}x')


if __name__ == '__main__':
  app.run(main)
