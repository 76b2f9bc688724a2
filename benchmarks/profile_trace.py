"""XLA op time from a jax.profiler (Perfetto) trace, grouped by kind of op or by JAX source.

Shared by benchmarks/step_profile.py (the training step) and decode_profile.py (decoding).
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Callable, Optional

import jax

# Trace events that enclose others (the executor, Python frames, a loop's or a branch's
# whole body) or only mark an op's end: not ops themselves.
_ENCLOSING = ('ThunkExecutor', '$', 'SlinkyThreadPool', 'PjitFunction', 'CommonPjRt',
              'TfrtCpu', 'PjRt', 'while', 'conditional', 'end: ')


def op_kind(name: str) -> str:
  """The kind of an XLA:CPU op, from the name the thunk runtime gives its trace event."""
  if name.startswith(('ynn_fusion', 'xnn_fusion', 'onednn', 'dot', 'convolution')):
    return 'matrix multiplication'
  if name.startswith(('copy', 'transpose')) or re.match(r'\w*(copy|transpose)\w*_fusion', name):
    return 'layout copies / transposes'
  if name.startswith('gather') or re.match(r'\w*gather\w*_fusion', name):
    return 'gathers (e.g. beam reordering)'
  if 'fusion' in name or name.startswith('wrapped_'):
    return 'other fusions (elementwise, reductions)'
  return 'rest (control flow, collectives, RNG keys)'


def summarize(trace_file: str, steps: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
  """(ms per step by kind, [(op, ms per step)] heaviest first) from a Perfetto trace."""
  with gzip.open(trace_file) as f:
    events = json.load(f)['traceEvents']
  per_op = collections.defaultdict(float)
  for event in events:
    if event.get('ph') == 'X' and not event['name'].startswith(_ENCLOSING):
      per_op[event['name']] += event['dur'] / 1e3 / steps  # Microseconds -> ms per step.
  by_kind = collections.defaultdict(float)
  for name, ms in per_op.items():
    by_kind[op_kind(name)] += ms
  return dict(by_kind), sorted(per_op.items(), key=lambda item: -item[1])


def op_sources(hlo_text: str) -> dict[str, str]:
  """{HLO instruction: the JAX operation it came from}, from XLA's op_name metadata.

  Layer and module numbers are folded to '#' (encoder_layer_# covers every layer), the outer
  jit's name is dropped, and an op fused from several keeps the first, so the ops of one kind
  of sublayer land in one group.
  """
  sources = {}
  for match in re.finditer(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"',
                           hlo_text, re.MULTILINE):
    source = re.sub(r'_\d+\b', '_#', match.group(2).split(';')[0])  # ';' joins fused ops.
    sources.setdefault(match.group(1), re.sub(r'^jit\([^)]*\)/', '', source))
  return sources


def time_by_source(per_op: list[tuple[str, float]], sources: dict[str, str],
                   kind: str) -> list[tuple[str, float]]:
  """[(JAX operation, ms)] of the ops of `kind`, heaviest first.

  Ops without metadata (copies XLA inserts itself) are grouped as 'unknown'.
  """
  totals = collections.defaultdict(float)
  for name, ms in per_op:
    if op_kind(name) == kind:
      totals[sources.get(name, 'unknown (no op_name: XLA inserted it)')] += ms
  return sorted(totals.items(), key=lambda item: -item[1])


def enable_op_events() -> None:
  """Asks XLA:CPU for one trace event per op; call before JAX starts its CPU client."""
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_enable_xprof_traceme=true').strip()


def trace(run: Callable[[], object], repeats: int, trace_dir: Optional[str] = None):
  """Traces `repeats` calls of `run` (which must block until its work is done).

  Returns (wall ms per call, ms per call by kind, [(op, ms per call)] heaviest first,
  trace_dir). The wall time is a little longer than untraced.
  """
  trace_dir = trace_dir or tempfile.mkdtemp(prefix='profile_')
  start = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(repeats):
      run()
  wall_ms = 1e3 * (time.perf_counter() - start) / repeats
  trace_file = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'),
                                recursive=True))[-1]
  by_kind, per_op = summarize(trace_file, repeats)
  if not by_kind:
    raise RuntimeError(f'{trace_file} holds no XLA op events: was the backend started before '
                       'enable_op_events()?')
  return wall_ms, by_kind, per_op, trace_dir


def print_table(by_kind: dict[str, float], per_op: list[tuple[str, float]], *, unit: str,
                top: int) -> None:
  """The op time by kind with shares, then the `top` heaviest single ops."""
  total = sum(by_kind.values())
  print(f'{"op kind":44s} {f"ms/{unit} (all threads)":>22s} {"share":>6s}')
  for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1]):
    print(f'{kind:44s} {ms:22.1f} {ms / total:6.1%}')
  print(f'{"total":44s} {total:22.1f}\n\nHeaviest single ops (ms/{unit}):')
  for name, ms in per_op[:top]:
    print(f'  {ms:8.1f}  {name}')
