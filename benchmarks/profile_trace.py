"""XLA op time from a jax.profiler (Perfetto) trace, grouped by kind of op."""

import collections
import gzip
import json
import re

# Trace events that enclose others (the executor, Python frames): not ops themselves.
_ENCLOSING = ('ThunkExecutor', '$', 'SlinkyThreadPool', 'PjitFunction', 'CommonPjRt',
              'TfrtCpu', 'PjRt')


def op_kind(name: str) -> str:
  """The kind of an XLA:CPU op, from the name the thunk runtime gives its trace event."""
  if name.startswith(('ynn_fusion', 'xnn_fusion', 'onednn', 'dot', 'convolution')):
    return 'matrix multiplication'
  if name.startswith(('copy', 'transpose')) or re.match(r'\w*(copy|transpose)\w*_fusion', name):
    return 'layout copies / transposes'
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
