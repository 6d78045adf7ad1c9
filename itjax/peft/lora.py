"""LoRA: trainable low-rank updates `W + (alpha / r) * A @ B` of chosen projection kernels.

`lora()` is the gin entry (`train.peft = @lora()`); `merge_lora` folds the updates into the base
weights (a pure function of the params tree), so a merged model is a plain itjax model that exports
to HF like any other and gives the same logits as the unmerged one. QLoRA (`lora.quantize_base`)
keeps the frozen attention and MLP kernels quantized (`itjax.models.quant`); merging dequantizes
them exactly as the model does at every matmul, so the merged float model is the one that trained.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax.numpy as jnp

from itjax.errors import UserError
from itjax.models import quant
from itjax.models.peft_hooks import Params, PeftConfig, flatten, unflatten
from itjax.peft.method import check_base_dtype, check_quantization

# PEFT / HF module names users already write in `target_modules`, and the itjax kernels they denote.
HF_MODULE_ALIASES = {
    "q_proj": "q_kernel", "k_proj": "k_kernel", "v_proj": "v_kernel", "o_proj": "o_kernel",
    "gate_proj": "wi_0", "up_proj": "wi_1", "down_proj": "wo",  # Llama family
    "q": "q_kernel", "k": "k_kernel", "v": "v_kernel", "o": "o_kernel", "wi_0": "wi_0", "wi_1": "wi_1",  # T5
    "wo": "wo",
}
DEFAULT_TARGETS = ("q_proj", "v_proj")  # peft's default for Llama-family models


def target_patterns(target_modules: str | Sequence[str]) -> tuple[str, ...]:
  """Regexes on param paths: an HF module name (q_proj, down_proj, q, wo, ...) becomes `(^|/)<kernel>$`,
  "all-linear" every attention and MLP kernel; anything else is taken as a regex already."""
  if isinstance(target_modules, str):
    target_modules = (target_modules,)
  out = []
  for t in target_modules:
    if t == "all-linear":
      out.append(r"(^|/)([qkvo]_kernel|wi_[01]|wo)$")
    elif t in HF_MODULE_ALIASES:
      out.append(rf"(^|/){HF_MODULE_ALIASES[t]}$")
    else:
      try:
        re.compile(t)
      except re.error as e:
        raise UserError(f"lora.target_modules: {t!r} is not a valid regex ({e})") from None
      out.append(t)
  return tuple(out)


@gin.configurable
def lora(rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
         target_modules: str | Sequence[str] = DEFAULT_TARGETS, base_dtype: str = "float32",
         quantize_base: str | None = None, quant_block_size: int = 64) -> PeftConfig:
  """LoRA on the kernels named by `target_modules` (HF module names, "all-linear", or regexes on itjax
  param paths such as "layers_.*/attn/q_kernel"); the update is scaled by alpha / rank. `dropout` drops
  the LoRA branch's input in training steps, as peft does.

  QLoRA: `quantize_base` = "int8" (bitsandbytes' load_in_8bit: absmax per output channel) or "nf4"
  (load_in_4bit with bnb_4bit_quant_type="nf4", blocks of `quant_block_size`, bitsandbytes' blocksize,
  along the input dim; no double quantization) stores every frozen attention and MLP kernel quantized,
  whichever kernels LoRA targets; `base_dtype` (bitsandbytes' torch_dtype) stays the dtype of the other
  frozen weights (embeddings, head, norms) and of the weights the kernels are quantized from. Each
  kernel is dequantized to the model's param dtype where its matmul reads it; the LoRA variables stay
  float32."""
  if not isinstance(rank, int) or rank <= 0:
    raise UserError(f"lora.rank={rank!r} must be a positive integer")
  if not 0.0 <= dropout < 1.0:
    raise UserError(f"lora.dropout={dropout!r} must be in [0, 1)")
  if not target_modules:
    raise UserError("lora.target_modules is empty: name at least one kernel (e.g. 'q_proj' or 'all-linear')")
  if base_dtype in quant.FORMATS:
    raise UserError(f"lora.base_dtype={base_dtype!r} is a quantized format: set lora.quantize_base={base_dtype!r} "
                    "(lora.base_dtype stays the float dtype of the weights left unquantized)")
  check_base_dtype("lora.base_dtype", base_dtype)
  check_quantization(quantize_base, quant_block_size)
  return PeftConfig(lora_rank=rank, lora_alpha=float(alpha), lora_dropout=float(dropout),
                    lora_targets=target_patterns(target_modules), base_dtype=base_dtype, base_quant=quantize_base,
                    quant_block_size=quant_block_size)


def lora_pairs(params: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """Kernel path -> (A, B) for every LoRA-adapted kernel in a (combined or trainable) params tree."""
  flat = flatten(params)
  return {k[:-len("_lora_a")]: (v, flat[k[:-len("_lora_a")] + "_lora_b"]) for k, v in flat.items()
          if k.endswith("_lora_a")}


def lora_delta(a: Any, b: Any, kernel_shape: tuple[int, ...], scale: float) -> Any:
  """`scale * A @ B` in the kernel's shape; A [L?, *in, r], B [L?, r, *out] (L: scanned layers)."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.ndim + b.ndim - 2 == len(kernel_shape):  # one layer
    return scale * jnp.tensordot(a, b, axes=1)
  layers, rank = a.shape[0], a.shape[-1]
  delta = jnp.matmul(a.reshape(layers, -1, rank), b.reshape(layers, rank, -1))
  return scale * delta.reshape(kernel_shape)


def merge_lora(params: Mapping[str, Any], peft: PeftConfig) -> Params:
  """The base params with every LoRA update folded in (`W + alpha/r * A @ B`, in W's dtype), LoRA leaves removed.

  The result applies with the plain model (config without `peft`); refuses params that also carry
  prefixes or adapters, which have no weight to fold into. Quantized kernels (QLoRA) are first
  dequantized to float32 by the model's own `quant.dequantize`, and stay float32.
  """
  if peft.prefix_tokens or peft.adapter_dim:
    raise UserError("only LoRA merges into the base weights; prefix tuning and adapters add computation that "
                    "no plain model has (export them as an itjax checkpoint, or as a peft adapter for LoRA)")
  flat = flatten(quant.dequantize_tree(params))
  out = {k: v for k, v in flat.items() if not k.endswith(("_lora_a", "_lora_b"))}
  for kernel, (a, b) in lora_pairs(params).items():
    w = out[kernel]
    out[kernel] = (jnp.asarray(w, jnp.float32) + lora_delta(a, b, w.shape, peft.lora_scale)).astype(w.dtype)
  return unflatten(out)
