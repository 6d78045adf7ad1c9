"""Memory-efficient attention in plain JAX: a flash-attention forward (online softmax over key blocks) and
backward (scores recomputed per block) with a custom VJP, so neither [batch, heads, q, k] scores nor a dense
mask or bias ever exist. It runs on every backend, and it is the one fused path with a bias: `bias_fn`
computes each [batch, heads, block_q, block_kv] tile from positions (T5's relative-position bias), and its
parameters get exact gradients through the per-tile VJP.

Masking is structural: a query sees a key iff their segment ids are equal and non-zero (0 is padding), and,
when `causal`, the key's index is not after the query's. Rows that see nothing (padding) output 0. Causal tiles
wholly above the diagonal are skipped (a `lax.cond` per tile).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

BiasFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, q_pos [b, bq], kv_pos [b, bk]) -> [b, h, bq, bk]
_NEG = -1e30  # finite: a fully masked tile keeps exp(m - m_new) = 1 instead of NaN


def _pad_to(x: jax.Array, length: int, axis: int = 1) -> jax.Array:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad)


def _blocks(x: jax.Array, size: int) -> jax.Array:
  """[b, n * size, ...] -> [n, b, size, ...] (scan over the leading axis)."""
  return jnp.swapaxes(x.reshape(x.shape[0], x.shape[1] // size, size, *x.shape[2:]), 0, 1)


def _unblocks(x: jax.Array) -> jax.Array:
  """[n, b, size, ...] -> [b, n * size, ...]."""
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _tile(i, j, q_i, k_j, qs_i, ks_j, qp_i, kp_j, bias_params, bias_fn, causal, scale, bq, bk):
  """Scores [b, kv_heads, group, bq, bk] (fp32, scaled, biased) and the visibility mask [b, 1, 1, bq, bk]."""
  s = jnp.einsum("bqhgd,bkhd->bhgqk", q_i, k_j, preferred_element_type=jnp.float32) * scale
  if bias_fn is not None:
    s = s + bias_fn(bias_params, qp_i, kp_j).astype(jnp.float32).reshape(s.shape)
  mask = (qs_i[:, :, None] == ks_j[:, None, :]) & (ks_j[:, None, :] != 0)
  if causal:
    mask = mask & ((i * bq + jnp.arange(bq))[:, None] >= (j * bk + jnp.arange(bk))[None, :])
  return s, mask[:, None, None]


def _needed(i, j, causal: bool, bq: int, bk: int):
  """Whether tile (i, j) has any visible pair: under causality, its first key is not after its last query."""
  return (j * bk <= i * bq + bq - 1) if causal else True


def _maybe(pred, fn, carry):
  return fn(carry) if pred is True else jax.lax.cond(pred, fn, lambda c: c, carry)


def _forward(q, k, v, qs, ks, qp, kp, bias_params, bias_fn, causal, scale, bq, bk):
  """Blocked inputs -> (out [nq, b, bq, kh, g, d] fp32, logsumexp [nq, b, kh, g, bq])."""
  nk = k.shape[0]

  def q_block(args):
    i, q_i, qs_i, qp_i = args
    b, _, kh, g, d = q_i.shape

    def step(carry, xs):
      j, k_j, v_j, ks_j, kp_j = xs

      def compute(carry):
        o, m, denom = carry
        s, mask = _tile(i, j, q_i, k_j, qs_i, ks_j, qp_i, kp_j, bias_params, bias_fn, causal, scale, bq, bk)
        m_new = jnp.maximum(m, jnp.max(jnp.where(mask, s, _NEG), axis=-1))
        p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
        corr = jnp.exp(m - m_new)
        o = o * corr[..., None] + jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(v_j.dtype), v_j,
                                              preferred_element_type=jnp.float32)
        return o, m_new, denom * corr + jnp.sum(p, axis=-1)

      return _maybe(_needed(i, j, causal, bq, bk), compute, carry), None

    init = (jnp.zeros((b, kh, g, bq, d), jnp.float32), jnp.full((b, kh, g, bq), _NEG, jnp.float32),
            jnp.zeros((b, kh, g, bq), jnp.float32))
    (o, m, denom), _ = jax.lax.scan(step, init, (jnp.arange(nk), k, v, ks, kp))
    seen = denom > 0
    safe_l = jnp.where(seen, denom, 1.0)
    out = jnp.where(seen[..., None], o / safe_l[..., None], 0.0)
    return jnp.moveaxis(out, 3, 1), jnp.where(seen, m + jnp.log(safe_l), 0.0)  # out -> [b, bq, kh, g, d]

  return jax.lax.map(q_block, (jnp.arange(q.shape[0]), q, qs, qp))


def _backward(q, k, v, qs, ks, qp, kp, bias_params, out, lse, do, bias_fn, causal, scale, bq, bk):
  """Gradients for blocked inputs: one pass over key blocks, each over all query blocks (dq carried)."""
  nq = q.shape[0]
  delta = jnp.moveaxis(jnp.sum(do.astype(jnp.float32) * out, axis=-1), 2, -1)  # [nq, b, kh, g, bq]
  zeros_bias = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), bias_params)

  def kv_block(carry, xs):
    dq, dbias = carry
    j, k_j, v_j, ks_j, kp_j = xs

    def q_step(carry, i):
      def compute(carry):
        dk_j, dv_j, dq, dbias = carry
        q_i, do_i = q[i], do[i]
        s, mask = _tile(i, j, q_i, k_j, qs[i], ks_j, qp[i], kp_j, bias_params, bias_fn, causal, scale, bq, bk)
        p = jnp.where(mask, jnp.exp(s - lse[i][..., None]), 0.0)
        dv_j = dv_j + jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bqhgd,bkhd->bhgqk", do_i, v_j, preferred_element_type=jnp.float32)
        ds = p * (dp - delta[i][..., None])
        dsc = (ds * scale).astype(q_i.dtype)
        dq_i = jnp.einsum("bhgqk,bkhd->bqhgd", dsc, k_j, preferred_element_type=jnp.float32)
        dq = jax.lax.dynamic_update_index_in_dim(dq, dq[i] + dq_i, i, 0)
        dk_j = dk_j + jnp.einsum("bhgqk,bqhgd->bkhd", dsc, q_i, preferred_element_type=jnp.float32)
        if bias_fn is not None:
          tile_bias, vjp = jax.vjp(lambda p_: bias_fn(p_, qp[i], kp_j), bias_params)
          (g,) = vjp(ds.reshape(tile_bias.shape).astype(tile_bias.dtype))
          dbias = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), dbias, g)
        return dk_j, dv_j, dq, dbias

      return _maybe(_needed(i, j, causal, bq, bk), compute, carry), None

    init = (jnp.zeros(k_j.shape, jnp.float32), jnp.zeros(v_j.shape, jnp.float32), dq, dbias)
    (dk_j, dv_j, dq, dbias), _ = jax.lax.scan(q_step, init, jnp.arange(nq))
    return (dq, dbias), (dk_j, dv_j)

  (dq, dbias), (dk, dv) = jax.lax.scan(kv_block, (jnp.zeros(q.shape, jnp.float32), zeros_bias),
                                       (jnp.arange(k.shape[0]), k, v, ks, kp))
  return dq, dk, dv, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11, 12))
def _attention(q, k, v, qs, ks, qp, kp, bias_params, bias_fn, causal, scale, bq, bk):
  return _fwd(q, k, v, qs, ks, qp, kp, bias_params, bias_fn, causal, scale, bq, bk)[0]


def _fwd(q, k, v, qs, ks, qp, kp, bias_params, bias_fn, causal, scale, bq, bk):
  out, lse = _forward(q, k, v, qs, ks, qp, kp, bias_params, bias_fn, causal, scale, bq, bk)
  return out.astype(q.dtype), (q, k, v, qs, ks, qp, kp, bias_params, out, lse)


def _bwd(bias_fn, causal, scale, bq, bk, res, do):
  q, k, v, qs, ks, qp, kp, bias_params, out, lse = res
  dq, dk, dv, dbias = _backward(q, k, v, qs, ks, qp, kp, bias_params, out, lse, do, bias_fn, causal, scale, bq, bk)
  dbias = jax.tree.map(lambda g, p: g.astype(p.dtype), dbias, bias_params)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None, dbias


_attention.defvjp(_fwd, _bwd)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segments: jax.Array, kv_segments: jax.Array, *,
                        scale: float, causal: bool = False, q_positions: jax.Array | None = None,
                        kv_positions: jax.Array | None = None, bias_params: Any = None, bias_fn: BiasFn | None = None,
                        block_q: int = 512, block_kv: int = 512) -> jax.Array:
  """q [b, tq, heads, d], k/v [b, tk, kv_heads, d] (grouped-query: heads a multiple of kv_heads) -> [b, tq, heads, d].

  Segments [b, t] int (0 = padding); positions [b, t] feed `bias_fn` only. Lengths are padded up to whole blocks.
  """
  b, tq, h, d = q.shape
  tk, kh = k.shape[1], k.shape[2]
  if causal and tq != tk:
    raise ValueError(f"causal blockwise attention needs equal query and key lengths, got {tq} and {tk}")
  bq, bk = min(block_q, tq), min(block_kv, tk)
  pq, pk = -(-tq // bq) * bq, -(-tk // bk) * bk
  if q_positions is None:
    q_positions = jnp.zeros((b, tq), jnp.int32)
  if kv_positions is None:
    kv_positions = jnp.zeros((b, tk), jnp.int32)
  qb = _blocks(_pad_to(q, pq).reshape(b, pq, kh, h // kh, d), bq)
  kb, vb = _blocks(_pad_to(k, pk), bk), _blocks(_pad_to(v, pk), bk)
  def ids(x, length, size):  # padded rows get segment 0: padding, seen by no one
    return _blocks(_pad_to(x.astype(jnp.int32), length), size)

  qs, ks = ids(q_segments, pq, bq), ids(kv_segments, pk, bk)
  qp, kp = ids(q_positions, pq, bq), ids(kv_positions, pk, bk)
  out = _attention(qb, kb, vb, qs, ks, qp, kp, bias_params, bias_fn, causal, float(scale), bq, bk)
  return _unblocks(out).reshape(b, pq, h, d)[:, :tq]
