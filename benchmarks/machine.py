"""The machine a benchmark ran on, and the peak FLOP/s its MFU is measured against.

Accelerators use the vendor's dense (no structured sparsity) peak for the compute dtype. A CPU
has no honest spec sheet figure (cores, clocks, SIMD width and sharing all vary), so its peak
is measured in the same run: the best time of a large jitted jnp.dot, what XLA's own matrix
kernel reaches on this machine now.
"""

import os
import platform
import time

import jax
import jax.numpy as jnp

# (device_kind substring, {dtype: peak FLOP/s}); the first match wins, so specific names first.
SPEC_PEAKS = (
    ('H100 PCIe', {'bfloat16': 756e12, 'float32': 51e12}),
    ('H100', {'bfloat16': 989e12, 'float32': 67e12}),  # SXM; H100 80GB HBM3.
    ('H200', {'bfloat16': 989e12, 'float32': 67e12}),  # Same compute as H100 SXM.
    ('A100', {'bfloat16': 312e12, 'float32': 19.5e12}),
    ('L4', {'bfloat16': 121e12, 'float32': 30.3e12}),
    ('V100', {'float16': 125e12, 'float32': 15.7e12}),
    ('T4', {'float16': 65e12, 'float32': 8.1e12}),
    ('TPU v4', {'bfloat16': 275e12}),
    ('TPU v5 lite', {'bfloat16': 197e12}),
)


def cpu_model() -> str:
  """The 'model name' of /proc/cpuinfo (Linux), else what platform reports."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def describe() -> dict[str, str]:
  """Rows naming the machine: CPU, cores this process may use, JAX devices and versions."""
  usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  devices = jax.devices()
  return {
      'cpu': cpu_model(),
      'cpu cores': f'{os.cpu_count()} ({usable} usable by this process)',
      'jax devices': f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform})',
      'versions': f'python {platform.python_version()}, jax {jax.__version__}',
  }


def spec_peak(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one accelerator at `dtype`, or None if not in SPEC_PEAKS."""
  for name, peaks in SPEC_PEAKS:
    if name.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def best_seconds(fn, *args, repeats: int) -> float:
  """The best of `repeats` timed calls of fn(*args), after one untimed call (compilation)."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def measured_matmul_peak(size: int = 2048, dtype: str = 'float32', repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` timed [size, size] @ [size, size] products (2 n^3 FLOPs)."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (size, size), jnp.dtype(dtype)) for k in keys)
  return 2.0 * size ** 3 / best_seconds(jax.jit(jnp.dot), a, b, repeats=repeats)


def peak_flops(dtype: str, matmul_size: int = 2048) -> tuple[float, str]:
  """(peak FLOP/s of all devices together, where the figure comes from).

  Accelerators: the spec peak times the device count. CPU: one measured product, which
  already uses every core, however many host devices XLA was told to fake.
  """
  devices = jax.devices()
  if devices[0].platform != 'cpu':
    peak = spec_peak(devices[0].device_kind, dtype)
    if peak is not None:
      source = f'spec sheet, {len(devices)} x {devices[0].device_kind}, {dtype} dense'
      return len(devices) * peak, source
  peak = measured_matmul_peak(matmul_size, dtype)
  return peak, f'measured: jitted jnp.dot {matmul_size}x{matmul_size} {dtype}, best of 5'
