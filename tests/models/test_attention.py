"""Fused attention kernels against the XLA reference: forward and gradients on packed batches (several segments,
padding rows), grouped-query heads, causal and cross attention, and a learned bias computed per tile. The Pallas
kernels run in interpret mode on the CPU; under an 8-device mesh they run in shard_map."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from itjax.errors import UserError
from itjax.models import attention
from itjax.models.attention import AttentionSpec
from itjax.models.t5 import relative_bias


def _packed_segments(batch: int, length: int, seed: int) -> np.ndarray:
  """Rows of 1-4 segments of random lengths followed by padding (0); one row without padding."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((batch, length), np.int32)
  for r in range(batch):
    cuts = np.sort(rng.choice(np.arange(1, length), size=rng.integers(1, 4), replace=False))
    end = length if r == 0 else int(rng.integers(length // 2, length))
    start, sid = 0, 1
    for c in [*cuts[cuts < end], end]:
      seg[r, start:c] = sid
      start, sid = c, sid + 1
  return seg


def _positions(seg: np.ndarray) -> np.ndarray:
  """Packing positions: 0, 1, ... restarting at every segment."""
  pos = np.zeros_like(seg)
  for r in range(seg.shape[0]):
    for i in range(1, seg.shape[1]):
      pos[r, i] = pos[r, i - 1] + 1 if seg[r, i] == seg[r, i - 1] else 0
  return pos


def _qkv(batch, tq, tk, heads, kv_heads, dim, seed=0, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 3)
  shapes = ((batch, tq, heads, dim), (batch, tk, kv_heads, dim), (batch, tk, kv_heads, dim))
  return tuple(jax.random.normal(key, shape, dtype) for key, shape in zip(ks, shapes, strict=True))


def _loss_and_grads(fn, q, k, v, params, seg):
  """A loss that ignores padding rows (as the training loss does) and its gradients."""
  weight = jnp.asarray(seg != 0, jnp.float32)[:, :, None, None]
  cot = jax.random.normal(jax.random.key(7), q.shape)

  def loss(q, k, v, params):
    return jnp.sum(fn(q, k, v, params) * cot * weight)

  return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(q, k, v, params)


def _check_close(got, want, tol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=tol, rtol=tol)


def _t5_bias(bidirectional):
  return functools.partial(relative_bias, bidirectional=bidirectional, num_buckets=32, max_distance=128,
                           dtype=jnp.float32)


@pytest.mark.parametrize("causal,heads,kv_heads,bias", [
    (True, 4, 2, False),   # decoder: packed causal GQA
    pytest.param(True, 4, 4, True, marks=pytest.mark.slow),  # T5 decoder self-attention: causal + relative bias
    (False, 2, 2, True),   # T5 encoder: bidirectional + relative bias
    pytest.param(False, 4, 1, False, marks=pytest.mark.slow),  # multi-query, non-causal
])
def test_blockwise_matches_reference(causal, heads, kv_heads, bias):
  b, t, d = 3, 45, 8  # 45 is not a multiple of the 16-wide tiles: the kernel pads
  seg = _packed_segments(b, t, seed=heads + kv_heads)
  pos = jnp.asarray(_positions(seg))
  seg = jnp.asarray(seg)
  q, k, v = _qkv(b, t, t, heads, kv_heads, d)
  table = jax.random.normal(jax.random.key(3), (32, heads)) if bias else None
  bias_fn = _t5_bias(not causal) if bias else None

  def spec(params):
    return AttentionSpec(q_segments=seg, q_positions=pos, bias_params=params, bias_fn=bias_fn, causal=causal)

  def blockwise(q, k, v, params):
    return attention.blockwise_attention(q, k, v, seg, seg, scale=d ** -0.5, causal=causal, q_positions=pos,
                                         kv_positions=pos, bias_params=params, bias_fn=bias_fn, block_q=16,
                                         block_kv=16) * (seg != 0)[:, :, None, None]

  def reference(q, k, v, params):
    return attention.reference_attention(q, k, v, spec(params), scale=d ** -0.5)

  np.testing.assert_allclose(blockwise(q, k, v, table), reference(q, k, v, table), atol=2e-6)
  got, want = _loss_and_grads(blockwise, q, k, v, table, seg), _loss_and_grads(reference, q, k, v, table, seg)
  _check_close(got, want, 2e-5)
  if bias:  # the bias table really receives a gradient (not a zero that would also "match")
    assert float(jnp.abs(got[1][3]).max()) > 1e-3


def test_blockwise_cross_attention_and_padding_rows_are_zero():
  b, tq, tk, h, d = 2, 20, 37, 2, 8
  q_seg = np.array([[1] * 8 + [2] * 10 + [0] * 2, [1] * 20])
  kv_seg = np.array([[1] * 15 + [2] * 20 + [0] * 2, [1] * 30 + [0] * 7])
  q, k, v = _qkv(b, tq, tk, h, h, d, seed=1)
  spec = AttentionSpec(q_segments=jnp.asarray(q_seg), kv_segments=jnp.asarray(kv_seg))
  out = attention.attend(q, k, v, spec, impl="blockwise", scale=0.3)
  ref = attention.reference_attention(q, k, v, spec, scale=0.3)
  np.testing.assert_allclose(out, ref, atol=2e-6)
  assert float(jnp.abs(out[0, 18:]).max()) == 0.0  # padding queries output exactly zero
  assert float(jnp.abs(out[0, :18]).min()) > 0.0


def test_blockwise_bfloat16_close_to_float32_reference():
  b, t, h, d = 2, 64, 4, 16
  seg = jnp.asarray(_packed_segments(b, t, seed=5))
  q, k, v = _qkv(b, t, t, h, 2, d, seed=2)
  spec = AttentionSpec(q_segments=seg, causal=True)
  ref = attention.reference_attention(q, k, v, spec, scale=d ** -0.5)
  out = attention.blockwise_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), seg, seg, scale=d ** -0.5,
                                      causal=True, block_q=16, block_kv=32)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32) * np.asarray(seg != 0)[:, :, None, None], ref, atol=3e-2)


@pytest.mark.parametrize("impl", ["tpu_splash", "gpu_pallas"])
def test_pallas_kernels_match_reference_in_interpret_mode(impl):
  b, t, h, kh, d = 2, 200, 4, 2, 16  # padded to 256 inside
  seg = _packed_segments(b, t, seed=11)
  seg = jnp.asarray(seg)
  q, k, v = _qkv(b, t, t, h, kh, d, seed=4)
  spec = AttentionSpec(q_segments=seg, causal=True)

  def fused(q, k, v, _):
    return attention.attend(q, k, v, spec, impl=impl, scale=d ** -0.5)

  def reference(q, k, v, _):
    return attention.reference_attention(q, k, v, spec, scale=d ** -0.5)

  np.testing.assert_allclose(fused(q, k, v, None), reference(q, k, v, None), atol=1e-5)
  _check_close(_loss_and_grads(fused, q, k, v, None, seg), _loss_and_grads(reference, q, k, v, None, seg), 1e-4)


def test_splash_under_a_mesh_runs_per_shard():
  """Batch over `data`, heads over `tensor`: the kernel runs in shard_map and still equals the reference."""
  devices = np.array(jax.devices()[:4]).reshape(2, 1, 2)
  mesh = Mesh(devices, ("data", "fsdp", "tensor"))
  rules = (("batch", ("data", "fsdp")), ("heads", "tensor"), ("kv_heads", "tensor"), ("length", None), ("kv", None))
  b, t, h, kh, d = 2, 128, 4, 2, 16
  seg = jnp.asarray(_packed_segments(b, t, seed=2))
  q, k, v = _qkv(b, t, t, h, kh, d, seed=6)
  spec = AttentionSpec(q_segments=seg, causal=True)
  want = attention.reference_attention(q, k, v, spec, scale=0.25)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shard = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    args = [jax.device_put(x, shard) for x in (q, k, v)]
    got = jax.jit(lambda q, k, v: attention.attend(q, k, v, spec, impl="tpu_splash", scale=0.25))(*args)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_resolve_impl_per_platform_and_errors():
  self_attn = AttentionSpec(causal=True)
  cross = AttentionSpec(q_segments=jnp.ones((1, 2)), kv_segments=jnp.ones((1, 3)))
  biased = AttentionSpec(bias_fn=_t5_bias(True))
  resolve = attention.resolve_impl
  assert [resolve("auto", self_attn, p) for p in ("cpu", "tpu", "gpu")] == ["xla", "tpu_splash", "gpu_cudnn"]
  assert resolve("auto", biased, "tpu") == resolve("auto", cross, "gpu") == "blockwise"
  assert resolve("blockwise", self_attn, "cpu") == "blockwise"
  assert resolve("tpu_splash", AttentionSpec(dense_mask=jnp.ones((1, 1, 1, 4), bool)), "tpu") == "xla"  # decode step
  with pytest.raises(UserError, match="no bias input"):
    resolve("tpu_splash", biased, "tpu")
  with pytest.raises(UserError, match="cross-attention"):
    resolve("gpu_pallas", cross, "gpu")
  with pytest.raises(UserError, match="GPU only, not cpu"):
    resolve("gpu_cudnn", self_attn, "cpu")
  with pytest.raises(UserError, match="TPU only, not gpu"):
    resolve("tpu_splash", self_attn, "gpu")
  assert resolve("tpu_splash", self_attn, "cpu") == "tpu_splash"  # interpreted: tests of the real kernel
  with pytest.raises(UserError, match="attention_impl='flash'"):
    attention.check_impl("DecoderConfig", "flash")
