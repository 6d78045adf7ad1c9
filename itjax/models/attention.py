"""One attention entry point for both families, with the mask described by structure, not by a dense array.

`AttentionSpec` says who sees whom: equal non-zero segment ids (0 is padding), optional causality by index,
and an optional bias computed from positions by `bias_fn` (T5's relative-position bias). Given that, a fused
kernel never builds the [batch, 1, q, k] mask nor the [batch, heads, q, k] scores. `attention_impl`
(a model-config field, so gin sets it) picks the kernel:

  xla         the reference: dense mask (and bias), `jax.nn.dot_product_attention` on XLA
  blockwise   plain-JAX flash attention with a custom VJP (itjax.models.blockwise_attention): any backend,
              and the one fused path with a bias, which it computes per tile from positions
  tpu_splash  the Pallas TPU Splash kernel (segment ids, causal mask, GQA; no bias)
  gpu_cudnn   cuDNN flash attention through `jax.nn.dot_product_attention`: causal in-kernel; packed
              segments, when present, reach it as a dense [batch, 1, q, k] boolean mask (no scores)
  gpu_pallas  the Pallas Triton GPU kernel (segment ids, causal; GQA by repeating kv heads; no bias)
  auto        TPU: tpu_splash, GPU: gpu_cudnn, else xla; blockwise wherever there is a bias (T5) or the
              kernel cannot express the mask (different query and key segments, e.g. cross-attention)

Every implementation outputs 0 for query rows that see nothing (padding). A `dense_mask` (decode steps
against a KV cache, prefix tuning) always takes the xla path. Pallas kernels do not partition
themselves: under a mesh they run in `shard_map` over the batch and head axes of the logical rules.
Compiled for a CPU, the Pallas kernels run in interpret mode (slow: for tests of the real kernels).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from itjax.errors import UserError
from itjax.models.blockwise_attention import blockwise_attention

IMPLS = ("auto", "xla", "blockwise", "tpu_splash", "gpu_cudnn", "gpu_pallas")
_PALLAS_BLOCK = 512


@struct.dataclass
class AttentionSpec:
  """Who attends to whom. Segments [b, t] (None: one segment, no padding); positions [b, t] feed `bias_fn`.
  `kv_segments` / `kv_positions` None: the keys are the queries' own sequence (self-attention)."""

  q_segments: jax.Array | None = None
  kv_segments: jax.Array | None = None
  q_positions: jax.Array | None = None
  kv_positions: jax.Array | None = None
  bias_params: Any = None
  dense_mask: jax.Array | None = None  # [b, 1, q, k] bool; given, it replaces segments and causality
  dense_bias: jax.Array | None = None  # [b, heads, q, k]; given, it replaces bias_fn
  bias_fn: Callable | None = struct.field(pytree_node=False, default=None)
  causal: bool = struct.field(pytree_node=False, default=False)

  def mask(self, tq: int, tk: int, batch: int) -> jax.Array:
    """The dense [b, 1, q, k] boolean mask this spec describes."""
    if self.dense_mask is not None:
      return self.dense_mask
    qs, ks = self.segments(batch, tq, tk)
    mask = (qs[:, :, None] == ks[:, None, :]) & (ks[:, None, :] != 0)
    if self.causal:
      mask = mask & jnp.tril(jnp.ones((tq, tk), bool))[None]
    return mask[:, None]

  def bias(self) -> jax.Array | None:
    """The dense [b, heads, q, k] bias, or None."""
    if self.dense_bias is not None:
      return self.dense_bias
    if self.bias_fn is None:
      return None
    return self.bias_fn(self.bias_params, self.q_positions, self.key_positions)

  @property
  def key_positions(self) -> jax.Array | None:
    return self.q_positions if self.kv_positions is None else self.kv_positions

  @property
  def self_attention(self) -> bool:
    return self.kv_segments is None

  def segments(self, batch: int, tq: int, tk: int) -> tuple[jax.Array, jax.Array]:
    """(query, key) segment ids [b, t] int32."""
    qs = _segments(self.q_segments, batch, tq)
    return qs, (qs if self.self_attention else _segments(self.kv_segments, batch, tk))


def check_impl(owner: str, impl: str) -> None:
  if impl not in IMPLS:
    raise UserError(f"{owner}.attention_impl={impl!r}: expected one of {', '.join(IMPLS)}")


def _segments(seg: jax.Array | None, batch: int, length: int) -> jax.Array:
  return jnp.ones((batch, length), jnp.int32) if seg is None else seg.astype(jnp.int32)


def target_platform() -> str:
  """The platform being compiled for: the mesh's devices (a TPU topology compiled from a CPU host), else the
  default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh.abstract_device.platform
  return jax.default_backend()


_PLATFORM = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}


def resolve_impl(impl: str, spec: AttentionSpec, platform: str) -> str:
  """The implementation `impl` means for this spec on `platform` (see the module docstring)."""
  platform = _PLATFORM.get(platform, platform)
  if spec.dense_mask is not None:
    return "xla"
  if impl == "auto":
    if platform not in ("tpu", "gpu"):
      return "xla"
    if spec.bias_fn is not None or not spec.self_attention:
      return "blockwise"
    return "tpu_splash" if platform == "tpu" else "gpu_cudnn"
  if impl in ("tpu_splash", "gpu_pallas", "gpu_cudnn") and spec.bias_fn is not None:
    raise UserError(f"attention_impl={impl!r} has no bias input; T5's relative-position bias needs 'blockwise' "
                    "(or 'auto', which picks it)")
  if impl in ("tpu_splash", "gpu_pallas") and not spec.self_attention:
    raise UserError(f"attention_impl={impl!r} needs queries and keys from one sequence (self-attention); "
                    "use 'blockwise' (or 'auto') for cross-attention")
  wanted = {"tpu_splash": "tpu", "gpu_pallas": "gpu", "gpu_cudnn": "gpu"}.get(impl)
  if wanted and platform != wanted and not (platform == "cpu" and impl != "gpu_cudnn"):  # CPU: interpreted
    raise UserError(f"attention_impl={impl!r} runs on {wanted.upper()} only, not {platform}; use 'auto'")
  return impl


def attend(q: jax.Array, k: jax.Array, v: jax.Array, spec: AttentionSpec, *, impl: str, scale: float) -> jax.Array:
  """q [b, tq, heads, d], k/v [b, tk, kv_heads, d] -> [b, tq, heads, d] with the implementation `impl` resolves to."""
  platform = target_platform()
  impl = resolve_impl(impl, spec, platform)
  b, tq = q.shape[:2]
  tk = k.shape[1]
  if impl == "xla":
    return reference_attention(q, k, v, spec, scale=scale)
  qs, ks = spec.segments(b, tq, tk)
  if impl == "blockwise":
    out = blockwise_attention(q, k, v, qs, ks, scale=scale, causal=spec.causal, q_positions=spec.q_positions,
                              kv_positions=spec.key_positions, bias_params=spec.bias_params, bias_fn=spec.bias_fn)
  elif impl == "gpu_cudnn":  # no segments: causality alone, in-kernel; else a dense boolean mask (no scores)
    mask = None if spec.q_segments is None and spec.kv_segments is None else spec.mask(tq, tk, b)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=spec.causal, implementation="cudnn")
  else:
    kernel = functools.partial(_splash if impl == "tpu_splash" else _gpu_pallas, causal=spec.causal, scale=scale,
                               interpret=platform == "cpu")
    out = _sharded(kernel, q, k, v, qs)
  return out * (qs != 0)[:, :, None, None].astype(out.dtype)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, spec: AttentionSpec, *, scale: float) -> jax.Array:
  """The XLA path: dense mask and bias; rows that see nothing output 0."""
  b, tq = q.shape[:2]
  mask = spec.mask(tq, k.shape[1], b)
  bias = spec.bias()
  out = jax.nn.dot_product_attention(q, k, v, bias=None if bias is None else bias.astype(q.dtype), mask=mask,
                                     scale=scale, implementation="xla")
  return out * jnp.any(mask, axis=(1, 3))[:, :, None, None].astype(out.dtype)


def _sharded(kernel: Callable, q, k, v, seg):
  """Runs a Pallas kernel per shard: batch and heads split as the logical rules say, length whole."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, seg)
  q_spec = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
  kv_spec = nn.logical_to_mesh_axes(("batch", "length", "kv_heads", "kv"))
  if q_spec[1] is not None or q_spec[3] is not None:
    raise UserError("fused attention needs the 'length' and 'kv' axes unsharded (logical_axis_rules)")
  return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, P(q_spec[0], None)),
                       out_specs=q_spec, check_vma=False)(q, k, v, seg)


def _pad_length(x: jax.Array, length: int) -> jax.Array:
  return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def _padded(t: int) -> tuple[int, int]:
  """(padded length, block): whole blocks of at most 512, lengths rounded up to 128 (TPU/Triton tiles)."""
  t128 = -(-t // 128) * 128
  block = min(_PALLAS_BLOCK, t128)
  return -(-t128 // block) * block, block


def _splash(q, k, v, seg, *, causal: bool, scale: float, interpret: bool):
  """Splash attention (TPU Pallas) on [b, t, h, d]; GQA natively; segment 0 (padding) rows zeroed by the caller."""
  t, h = q.shape[1], q.shape[2]
  length, block = _padded(t)
  one = splash_mask.CausalMask((length, length)) if causal else splash_mask.FullMask((length, length))
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  kernel = splash.make_splash_mha(splash_mask.MultiHeadMask([one] * h), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=interpret)
  seg = _pad_length(seg, length)
  heads_first = [jnp.swapaxes(_pad_length(x, length), 1, 2) for x in (q * scale, k, v)]
  out = jax.vmap(lambda q_, k_, v_, s_: kernel(q_, k_, v_, segment_ids=splash.SegmentIds(s_, s_)))(*heads_first, seg)
  return jnp.swapaxes(out, 1, 2)[:, :t].astype(q.dtype)


def _gpu_pallas(q, k, v, seg, *, causal: bool, scale: float, interpret: bool):
  """The Pallas Triton flash kernel on [b, t, h, d]; it wants as many kv heads as query heads."""
  t, h, kh = q.shape[1], q.shape[2], k.shape[2]
  length, block = _padded(t)
  k, v = (jnp.repeat(x, h // kh, axis=2) for x in (k, v))
  b_ = min(128, block)  # forward tiles; the backward's smaller ones are the kernel's defaults
  sizes = gpu_attention.BlockSizes(block_q=b_, block_k=b_, block_q_dkv=32, block_kv_dkv=32, block_q_dq=32,
                                   block_kv_dq=32)
  out = gpu_attention.mha(*(_pad_length(x, length) for x in (q, k, v)), _pad_length(seg, length), sm_scale=scale,
                          causal=causal, block_sizes=sizes, interpret=interpret)
  return out[:, :t]
