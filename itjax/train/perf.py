"""Throughput figures: model FLOPs utilization (MFU) from tokens/s and a device's peak FLOP/s."""

from __future__ import annotations

import math
from typing import Any

import jax

# Dense bf16 peak FLOP/s per device (chip, or GPU) by `jax.Device.device_kind`; matched by prefix.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
}


def known_peak_flops(device_kind: str) -> float | None:
  """The peak of a known accelerator, None for CPUs and unknown kinds (MFU is then not reported)."""
  for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
    if device_kind.startswith(prefix):
      return PEAK_FLOPS[prefix]
  return None


def count_params(params: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))


def mfu(num_params: int, tokens_per_s: float, peak_flops_per_device: float | None, num_devices: int) -> float | None:
  """6 * params * tokens/s over the devices' peak (the usual 6N estimate: no attention term)."""
  if not peak_flops_per_device or num_devices <= 0:
    return None
  return 6.0 * num_params * tokens_per_s / (peak_flops_per_device * num_devices)
