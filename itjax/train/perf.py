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


def decoder_train_flops_per_token(cfg: Any, seq_len: int) -> float:
  """Training FLOPs per token of a Llama-shaped decoder, counted as MaxText counts them.

  3 x (forward matmul FLOPs): the q/k/v/o projections, the gated MLP's three matrices and the output
  head, plus causal attention's score and value matmuls (half of the full [seq, seq] products). Embedding
  lookups, norms and softmax are not counted. `cfg` needs DecoderConfig's shape fields.
  """
  e, h, kv, d = cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  per_layer = 2 * e * (h + 2 * kv) * d + 2 * h * d * e + 2 * 3 * e * cfg.mlp_dim
  attention = 2 * 2 * seq_len * h * d / 2  # q.k and p.v per query, causal: half the keys on average
  head = 2 * e * cfg.vocab_size
  return 3.0 * (cfg.num_layers * (per_layer + attention) + head)
