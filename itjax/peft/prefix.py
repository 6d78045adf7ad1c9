"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021).

The prefixes are stored as keys and values ready for attention (already rotated in Llama-family
models, like the KV cache peft's `past_key_values` fill); every real query sees all of them. They
are optimized directly (no reparametrization MLP) and start at small random values
(`init_scale`), so, unlike LoRA and adapters, a fresh prefix changes the outputs slightly.
"""

from __future__ import annotations

import gin

from itjax.errors import UserError
from itjax.models.peft_hooks import PeftConfig
from itjax.peft.method import check_base_dtype


@gin.configurable
def prefix_tuning(num_prefix_tokens: int = 16, init_scale: float = 0.02, base_dtype: str = "float32") -> PeftConfig:
  """`num_prefix_tokens` trainable key/value positions per attention layer (self- and cross-attention)."""
  if not isinstance(num_prefix_tokens, int) or num_prefix_tokens <= 0:
    raise UserError(f"prefix_tuning.num_prefix_tokens={num_prefix_tokens!r} must be a positive integer")
  if init_scale < 0:
    raise UserError(f"prefix_tuning.init_scale={init_scale!r} must be >= 0")
  check_base_dtype("prefix_tuning.base_dtype", base_dtype)
  return PeftConfig(prefix_tokens=num_prefix_tokens, prefix_init_scale=float(init_scale), base_dtype=base_dtype)
