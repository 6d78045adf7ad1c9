"""Quantized storage of frozen projection kernels (QLoRA): int8 per output channel, or 4-bit NF4 per block.

A quantized kernel is a dict `{"codes": ..., "scale": ...}` in the params tree where the float kernel
was (same path); the pair describes itself, so dequantizing needs no settings:

- int8 (LLM.int8()'s absmax, symmetric, per output channel): `codes` int8 in the kernel's shape,
  `scale` float32 in the kernel's shape with every input dim of size 1; `w ~ codes * scale` with
  `scale = absmax / 127` over the input dims.
- nf4 (QLoRA, Dettmers et al. 2023; bitsandbytes' `quant_type="nf4"` without double quantization):
  blocks of `block_size` consecutive entries along the kernel's last input dim (for a kernel whose
  inputs are flattened row-major, as HF's `o_proj` is, the same blocks whenever that dim is a multiple
  of the block), each scaled by its absmax and rounded to the nearest of the 16 NF4 values
  (`NF4_CODEBOOK`, bitsandbytes' table; ties go down, as its thresholds do). `codes` uint8 packs two
  4-bit indices per byte along that dim (the first of each pair in the high nibble, as bitsandbytes
  does), so that dim is halved; `scale` float32 is the kernel's shape with that dim divided by the
  block size. 4.5 bits per weight in all.

Only the attention (q/k/v/o) and MLP (wi_0/wi_1/wo) kernels are quantized, as bitsandbytes quantizes
every linear layer but the head; embeddings, the head, norms and biases keep their float dtype.
Models read kernels through `itjax.models.peft_hooks.kernel`, which dequantizes each one where its
matmul reads it, so one layer's float kernel exists at a time, never the whole base.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FORMATS = ("int8", "nf4")
# bitsandbytes' NF4 values (functional.get_4bit_type("nf4")): quantiles of N(0, 1) scaled to [-1, 1], with an exact 0.
NF4_CODEBOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)
# Decision thresholds between neighbouring values (bitsandbytes' dQuantizeNF4 compares `x > threshold`).
_NF4_THRESHOLDS = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2
# Kernel name -> (input dims, output dims) of the unscanned kernel; scanned ones lead with a `layers` dim.
KERNEL_DIMS = {"q_kernel": (1, 2), "k_kernel": (1, 2), "v_kernel": (1, 2), "o_kernel": (2, 1),
               "wi_0": (1, 1), "wi_1": (1, 1), "wo": (1, 1)}


def is_quantized(value: Any) -> bool:
  """Whether a params-tree node is a quantized kernel (`{"codes", "scale"}`) rather than an array or a module."""
  return isinstance(value, Mapping) and set(value) == {"codes", "scale"}


def input_axes(path: str, ndim: int) -> tuple[int, ...] | None:
  """The input (contracted) axes of the quantizable kernel at '/'-joined `path` (None: not quantized)."""
  dims = KERNEL_DIMS.get(path.rsplit("/", 1)[-1])
  if dims is None:
    return None
  lead = ndim - sum(dims)  # scanned layers
  return tuple(range(lead, lead + dims[0]))


def quantize_int8(w: jax.Array, in_axes: tuple[int, ...]) -> dict[str, jax.Array]:
  """Symmetric absmax int8 codes per output channel (the absmax is taken over `in_axes`)."""
  w = jnp.asarray(w, jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=in_axes, keepdims=True) / 127.0
  codes = jnp.round(w / jnp.where(scale > 0, scale, 1.0))
  return {"codes": jnp.clip(codes, -127, 127).astype(jnp.int8), "scale": scale}


def quantize_nf4(w: jax.Array, axis: int, block_size: int = 64) -> dict[str, jax.Array]:
  """NF4 codes of blocks of `block_size` along `axis`, packed two per byte, with each block's absmax."""
  w = jnp.asarray(w, jnp.float32)
  n = w.shape[axis]
  if block_size < 4 or block_size % 2 or n % block_size:
    raise ValueError(f"NF4 blocks of {block_size} along a dim of {n}: need an even block size >= 4 dividing it")
  blocks = w.reshape(*w.shape[:axis], n // block_size, block_size, *w.shape[axis + 1:])
  scale = jnp.max(jnp.abs(blocks), axis=axis + 1, keepdims=True)
  normed = blocks / jnp.where(scale > 0, scale, 1.0)
  idx = jnp.searchsorted(jnp.asarray(_NF4_THRESHOLDS), normed, side="left").astype(jnp.uint8)
  pairs = idx.reshape(*w.shape[:axis], n // 2, 2, *w.shape[axis + 1:])
  high, low = jnp.take(pairs, 0, axis=axis + 1), jnp.take(pairs, 1, axis=axis + 1)
  return {"codes": (high << 4) | low, "scale": jnp.squeeze(scale, axis + 1)}


def _packed_axis(codes_shape: tuple[int, ...], scale_shape: tuple[int, ...]) -> int:
  """The one axis where NF4 codes (n/2) and scales (n/block) differ: the blocked axis."""
  diff = [i for i, (c, s) in enumerate(zip(codes_shape, scale_shape, strict=True)) if c != s]
  if len(diff) != 1:
    raise ValueError(f"not an NF4 kernel: codes {codes_shape} vs scales {scale_shape}")
  return diff[0]


def dequantize(q: Mapping[str, Any], dtype: Any = jnp.float32) -> jax.Array:
  """The float kernel a quantized one stands for (computed in float32, returned in `dtype`)."""
  codes, scale = nn.meta.unbox(q["codes"]), nn.meta.unbox(q["scale"])
  scale = jnp.asarray(scale, jnp.float32)
  if codes.dtype == jnp.int8:
    return (codes.astype(jnp.float32) * scale).astype(dtype)
  if codes.dtype != jnp.uint8:
    raise ValueError(f"quantized kernel with codes of dtype {codes.dtype}: expected int8 or uint8 (nf4)")
  axis = _packed_axis(codes.shape, scale.shape)
  n = 2 * codes.shape[axis]
  block = n // scale.shape[axis]
  idx = jnp.stack([codes >> 4, codes & 0xF], axis=axis + 1)  # high nibble first
  values = jnp.take(jnp.asarray(NF4_CODEBOOK), idx.astype(jnp.int32), axis=0)
  blocks = values.reshape(*codes.shape[:axis], n // block, block, *codes.shape[axis + 1:])
  w = blocks * jnp.expand_dims(scale, axis + 1)
  return w.reshape(*codes.shape[:axis], n, *codes.shape[axis + 1:]).astype(dtype)


def quantize_kernel(w: jax.Array, path: str, fmt: str, block_size: int = 64) -> dict[str, jax.Array]:
  """A kernel (at '/'-joined `path`, so its input dims are known) in quantized storage `fmt` (int8 | nf4)."""
  axes = input_axes(path, jnp.ndim(w))
  if axes is None:
    raise ValueError(f"{path}: not a quantizable kernel (names: {', '.join(KERNEL_DIMS)})")
  if fmt == "int8":
    return quantize_int8(w, axes)
  if fmt == "nf4":
    return quantize_nf4(w, axes[-1], block_size)
  raise ValueError(f"unknown quantization {fmt!r}; expected one of {FORMATS}")


def quantized_names(path: str, names: tuple, fmt: str) -> dict[str, tuple]:
  """Logical axes of a quantized kernel's codes and scale, from the float kernel's: codes keep them (a packed
  dim stays a fraction of the same dim); scales drop the dims they are constant along or blocked on."""
  axes = input_axes(path, len(names))
  drop = set(axes) if fmt == "int8" else {axes[-1]}
  return {"codes": tuple(names), "scale": tuple(None if i in drop else n for i, n in enumerate(names))}


def quantize_tree(params: Mapping[str, Any], fmt: str, block_size: int = 64) -> dict[str, Any]:
  """The params tree with every quantizable kernel in storage `fmt`; boxed (nn.Partitioned) leaves stay boxed,
  with logical axes for codes and scales (`quantized_names`), so the quantized tree shards by the same rules."""

  def visit(node: Any, path: str) -> Any:
    if isinstance(node, Mapping):
      return {k: visit(v, f"{path}/{k}" if path else k) for k, v in node.items()}
    if input_axes(path, jnp.ndim(nn.meta.unbox(node))) is None:
      return node
    q = quantize_kernel(nn.meta.unbox(node), path, fmt, block_size)
    if isinstance(node, nn.Partitioned):
      names = quantized_names(path, node.names, fmt)
      return {k: node.replace(value=v, names=names[k]) for k, v in q.items()}
    return q

  return visit(params, "")


def dequantize_tree(params: Mapping[str, Any], dtype: Any = jnp.float32) -> dict[str, Any]:
  """The params tree with every quantized kernel replaced by its float values in `dtype` (others unchanged)."""
  if is_quantized(params):
    return dequantize(params, dtype)
  if isinstance(params, Mapping):
    return {k: dequantize_tree(v, dtype) for k, v in params.items()}
  return params
