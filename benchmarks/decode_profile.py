r"""Where decoding's time goes: a jax.profiler trace of decode.py's search, ops grouped by kind.

  python -m benchmarks.decode_profile --workdir=DIR [--beam_size=4] [--num_sentences=160]

Translates the first --num_sentences of the run's test split exactly as decode.py does
(translator_lib.BatchTranslator: length buckets, KV cache, the run's search settings), once to compile
and then once traced, and prints the op time summed over threads, grouped by kind: matrix
multiplications, layout copies and transposes, gathers (beam search reorders the
self-attention cache of every layer at every step), other fusions, and the rest (top-k,
control flow). On CPU, op-level events need XLA's `--xla_cpu_enable_xprof_traceme`, which
this script adds to XLA_FLAGS.
"""

from absl import app
from absl import flags

from benchmarks import machine
from benchmarks import profile_trace
from transformer import inference
from transformer import input_pipeline
from transformer import translator as translator_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir.', required=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_BEAM_SIZE = flags.DEFINE_integer('beam_size', None, "Beam width (1 = greedy); default: config's.")
_NUM_SENTENCES = flags.DEFINE_integer('num_sentences', 160, 'Test sentences translated.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, "Sentences a batch; default: the config's.")
_TRACE_DIR = flags.DEFINE_string('trace_dir', None, 'Where the trace goes (default: a temp dir).')
_TOP = flags.DEFINE_integer('top', 12, 'Single ops listed after the table of kinds.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  profile_trace.enable_op_events()  # No JAX computation has run yet.
  config, tokenizer, model, variables, step = inference.load_trained(
      _WORKDIR.value, _CHECKPOINT.value)
  translator = translator_lib.BatchTranslator(model, tokenizer,
                                    batch_size=_BATCH_SIZE.value or config.eval_batch_size)
  pairs = input_pipeline.load_pairs(config, 'test')[:_NUM_SENTENCES.value]
  sources = translator.encode_sources([fr for fr, _ in pairs])
  search = inference.search_config(config, beam_size=_BEAM_SIZE.value)
  translator.translate_ids(variables, sources, search)  # Compiles every bucket.
  wall_ms, by_kind, per_op, trace_dir = profile_trace.trace(
      lambda: translator.translate_ids(variables, sources, search), 1, _TRACE_DIR.value)

  print(f'\nWhere decoding goes: {_WORKDIR.value} (step {step}), d_model '
        f'{model.config.emb_dim}, vocab {model.config.vocab_size}, beam {search.beam_size}, '
        f'{len(sources)} test sentences in batches of {translator.batch_size}')
  for key, value in machine.describe().items():
    print(f'  {key:12s} {value}')
  print(f'  decode       {wall_ms / 1e3:.1f} s wall (traced, so a little slower than untraced)')
  print(f'  trace        {trace_dir}\n')
  profile_trace.print_table(by_kind, per_op, unit='decode', top=_TOP.value)


if __name__ == '__main__':
  app.run(main)
