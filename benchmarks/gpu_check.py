"""The GPU check: is one accelerator ready for the full study, and how long will it take?

  python -m benchmarks.gpu_check              # on the GPU (about 5 minutes on one H200)
  python -m benchmarks.gpu_check --dry_run    # the same code at a tiny size, on any CPU

Needs no data and no network: batches are random token ids at the full config's row shape,
and decoding starts from random sentences of IWSLT-like lengths. Measures, for Transformer-base
in bfloat16 (the study's 'auto' dtype on a GPU):
  * the matmul peak it can reach (a large jitted bf16 jnp.dot) beside the spec sheet's;
  * the training step of the baseline and of R-Drop (two forward passes): median step time,
    target tokens/s, model FLOP/s, MFU against both peaks, peak device memory;
  * what that implies: one IWSLT2017 epoch, a 50-epoch run, all ten variants;
  * beam-4 decoding of 1,000 sentences through decode.py's BatchTranslator (untrained weights run
    every hypothesis to its length limit, so this is an upper bound on a trained model's time).
Writes a table to stdout and the figures as JSON (--output, default
benchmarks/results/gpu_check_<device>.json).
"""

import json
import os
import statistics
import time
import types

from absl import app
from absl import flags
import jax
import numpy as np

import configs
from benchmarks import machine
from transformer import config_utils
from transformer import flops as model_flops
from transformer import models
from transformer import sharding
from transformer import steps
from transformer import translator as translator_lib

_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Tiny sizes, a few steps: checks the code path.')
_ROWS = flags.DEFINE_integer('batch_rows', 224, 'Packed rows per training batch (x 128/112 '
                             'tokens; 224 rows are ~25k target tokens, Vaswani\'s batch).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed training steps per variant.')
_SENTENCES = flags.DEFINE_integer('sentences', 1000, 'Sentences decoded at beam 4.')
_DECODE_BATCH = flags.DEFINE_integer('decode_batch_size', 256, 'Sentences per decoding batch.')
_OUTPUT = flags.DEFINE_string('output', None, 'JSON path (default benchmarks/results/...).')

# The IWSLT2017 fr-en training split: 232,825 pairs; ~4.5 M target tokens with the 16k joint
# vocabulary, eos included (an estimate from the pairs' mean English length).
IWSLT_EPOCH_TARGET_TOKENS = 4_500_000
EPOCHS = 50
VARIANTS = 10
# One of the ten runs is R-Drop, timed on its own; the other nine cost what the baseline does.
GOALS = {'mfu': 0.40, 'epoch_seconds': 10.0, 'study_hours': 2.0}
# IWSLT-like source lengths in tokens (TED segments: mostly 10-40 pieces).
SOURCE_LENGTHS = (8, 48)


def full_config(variant: str, dry_run: bool):
  config = configs.get_variant(variant, 'full')
  overrides = {'model.dtype': 'bfloat16' if jax.default_backend() != 'cpu' else 'float32'}
  if dry_run:
    overrides.update({'vocab_size': 64, 'model.emb_dim': 16, 'model.qkv_dim': 16,
                      'model.mlp_dim': 32, 'model.num_heads': 2, 'model.num_layers': 1,
                      'max_length': 16, 'max_target_length': 12, 'model.max_len': 64})
  config_utils.apply_overrides(config, overrides)
  return config


def random_batch(config, rows: int, seed: int) -> dict[str, np.ndarray]:
  """Rows full of real tokens at the config's source/target row lengths (no padding)."""
  rng = np.random.default_rng(seed)
  make = lambda length: rng.integers(3, config.vocab_size, (rows, length), dtype=np.int32)
  return {'inputs': make(config.max_length), 'targets': make(config.max_target_length)}


def time_training(config, rows: int, num_steps: int) -> dict:
  """Median step time of steps.py's compiled train step on random full rows."""
  config.batch_size, config.batch_tokens = rows, 0
  mesh = sharding.make_mesh()
  compiled = steps.compile_steps(config, mesh)
  batches = [sharding.shard_batch(random_batch(config, rows, seed), mesh) for seed in range(3)]
  start = time.perf_counter()
  state = compiled.init()
  state, metrics = compiled.train(state, batches[0])
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  for batch in batches:  # Warm up.
    state, metrics = compiled.train(state, batch)
  jax.block_until_ready(metrics)
  seconds = []
  for i in range(num_steps):
    start = time.perf_counter()
    state, metrics = compiled.train(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    seconds.append(time.perf_counter() - start)
  model_config = models.ModelConfig.from_config(config.model)
  flops = model_flops.train_step_flops(model_config, batch=rows, source_len=config.max_length,
                                       target_len=config.max_target_length)
  if config.r_drop_alpha > 0:
    flops *= 2  # Two forward and backward passes.
  step = statistics.median(seconds)
  return {'step_seconds': step, 'step_seconds_range': [min(seconds), max(seconds)],
          'compile_seconds': compile_seconds, 'tokens_per_step': rows * config.max_target_length,
          'tokens_per_second': rows * config.max_target_length / step,
          'model_flops_per_step': flops, 'model_flops_per_second': flops / step,
          'parameters': int(sum(x.size for x in jax.tree.leaves(state.params))),
          'loss_finite': bool(np.isfinite(float(metrics['train/loss'])))}


def time_decoding(config, num_sentences: int, batch_size: int) -> dict:
  """Beam-4 decoding of random sentences through the BatchTranslator decode.py uses."""
  model = models.make_model(config)
  variables = steps.model_variables(steps.compile_steps(config, sharding.make_mesh()).init())
  rng = np.random.default_rng(0)
  low, high = SOURCE_LENGTHS[0], min(SOURCE_LENGTHS[1], config.max_length)
  sources = [list(rng.integers(3, config.vocab_size, rng.integers(low, high))) + [1]
             for _ in range(num_sentences)]
  # The search needs only the eos id of a tokenizer; no vocabulary is loaded.
  translator = translator_lib.BatchTranslator(model, types.SimpleNamespace(eos_id=1),
                                         batch_size=batch_size)
  search = translator_lib.SearchConfig.from_config(config, beam_size=4)
  start = time.perf_counter()
  outputs = translator.translate_ids(variables, sources, search)
  seconds = time.perf_counter() - start
  return {'sentences': num_sentences, 'beam_size': 4, 'seconds': seconds,
          'sentences_per_second': num_sentences / seconds,
          'output_tokens': int(sum(len(o) + 1 for o in outputs)),
          'batch_size': translator.batch_size}


def peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return stats.get('peak_bytes_in_use') if stats else None


def run(dry_run: bool, rows: int, num_steps: int, num_sentences: int,
        decode_batch_size: int) -> dict:
  device = jax.devices()[0]
  dtype = 'bfloat16' if device.platform != 'cpu' else 'float32'
  spec = machine.spec_peak(device.device_kind, dtype)
  measured = machine.measured_matmul_peak(256 if dry_run else 8192, dtype)
  result = {'machine': machine.describe(), 'dry_run': dry_run, 'dtype': dtype,
            'peak_flops': {'spec': spec, 'measured_matmul': measured}}
  for variant in ('baseline', 'r_drop'):
    timing = time_training(full_config(variant, dry_run), rows, num_steps)
    for name, peak in result['peak_flops'].items():
      if peak:
        timing[f'mfu_vs_{name}'] = timing['model_flops_per_second'] / peak
    result[variant] = timing
  result['peak_memory_bytes'] = peak_memory_bytes()
  epoch = IWSLT_EPOCH_TARGET_TOKENS / result['baseline']['tokens_per_second']
  epoch_r_drop = IWSLT_EPOCH_TARGET_TOKENS / result['r_drop']['tokens_per_second']
  result['implied'] = {
      'iwslt_epoch_target_tokens (estimate)': IWSLT_EPOCH_TARGET_TOKENS,
      'epoch_seconds': epoch,
      'run_hours': EPOCHS * epoch / 3600,
      'study_hours': EPOCHS * ((VARIANTS - 1) * epoch + epoch_r_drop) / 3600,
  }
  result['decode'] = time_decoding(full_config('baseline', dry_run),
                                   min(num_sentences, 16) if dry_run else num_sentences,
                                   decode_batch_size)
  mfu = result['baseline'].get('mfu_vs_spec', result['baseline']['mfu_vs_measured_matmul'])
  result['goals'] = {
      f'MFU >= {GOALS["mfu"]:.0%}': mfu >= GOALS['mfu'],
      f'IWSLT epoch <= {GOALS["epoch_seconds"]:.0f} s': epoch <= GOALS['epoch_seconds'],
      f'ten 50-epoch runs <= {GOALS["study_hours"]:.0f} h':
          result['implied']['study_hours'] <= GOALS['study_hours'],
  }
  return result


def table(result: dict) -> str:
  gib = lambda b: f'{b / 2**30:.1f} GiB' if b else 'n/a (not reported by this backend)'
  tflops = lambda f: f'{f / 1e12:,.1f} TFLOP/s' if f else 'n/a'
  lines = ['', 'GPU check' + (' (DRY RUN: tiny sizes, figures mean nothing)'
                              if result['dry_run'] else ''),
           *(f'  {k:12s} {v}' for k, v in result['machine'].items()),
           f'  {"peak":12s} spec {tflops(result["peak_flops"]["spec"])}, measured '
           f'{result["dtype"]} matmul {tflops(result["peak_flops"]["measured_matmul"])}', '',
           f'  {"variant":9s} {"step ms":>9s} {"tgt tok/s":>11s} {"TFLOP/s":>8s} '
           f'{"MFU spec":>8s} {"MFU matmul":>10s} {"compile s":>9s}']
  for variant in ('baseline', 'r_drop'):
    t = result[variant]
    spec_mfu = f'{t["mfu_vs_spec"]:.1%}' if 'mfu_vs_spec' in t else 'n/a'
    lines.append(f'  {variant:9s} {1e3 * t["step_seconds"]:9.1f} {t["tokens_per_second"]:11,.0f} '
                 f'{t["model_flops_per_second"] / 1e12:8.1f} {spec_mfu:>8s} '
                 f'{t["mfu_vs_measured_matmul"]:10.1%} {t["compile_seconds"]:9.1f}')
  implied, decode = result['implied'], result['decode']
  lines += ['', f'  parameters {result["baseline"]["parameters"]:,}; '
            f'{result["baseline"]["tokens_per_step"]:,} target tokens a step; '
            f'peak device memory {gib(result["peak_memory_bytes"])}',
            f'  IWSLT epoch ({implied["iwslt_epoch_target_tokens (estimate)"] / 1e6:.1f} M target '
            f'tokens, estimate): {implied["epoch_seconds"]:,.1f} s; a {EPOCHS}-epoch run '
            f'{implied["run_hours"]:.2f} h; all {VARIANTS} variants {implied["study_hours"]:.2f} h',
            f'  beam-{decode["beam_size"]} decoding: {decode["sentences"]:,} sentences in '
            f'{decode["seconds"]:.1f} s (batch {decode["batch_size"]}, compilation included; '
            'untrained weights: an upper bound)', '',
            *(f'  goal {goal}: {"met" if met else "MISSED"}' for goal, met in
              result['goals'].items()), '']
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  dry = _DRY_RUN.value
  result = run(dry, 4 if dry else _ROWS.value, 2 if dry else _STEPS.value, _SENTENCES.value,
               8 if dry else _DECODE_BATCH.value)
  print(table(result))
  kind = jax.devices()[0].device_kind.replace(' ', '_')
  path = _OUTPUT.value or os.path.join(os.path.dirname(__file__), 'results',
                                       f'gpu_check_{"dry_run_" if dry else ""}{kind}.json')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'Wrote {path}')


if __name__ == '__main__':
  app.run(main)
