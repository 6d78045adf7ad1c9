"""Batched autoregressive decoding for decoder-only models, with a KV cache.

Prompts are left-padded so that every row's last prompt token sits in the same
column: one prefill call fills the cache, then a `lax.while_loop` emits one
token per step for all rows until each has produced EOS or the budget is
spent. Padding slots have segment id 0, which the attention mask ignores.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from itjax.models.decoder import Decoder


def left_pad(prompts: list[list[int]], multiple: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, mask) [batch, length], length rounded up to `multiple` (fewer recompiles)."""
  length = max(len(p) for p in prompts)
  length = -(-length // multiple) * multiple
  tokens = np.zeros((len(prompts), length), np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    if p:
      tokens[i, length - len(p):] = p
      mask[i, length - len(p):] = 1
  return tokens, mask


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id"))
def greedy_decode(model: Decoder, params, tokens: jax.Array, mask: jax.Array, *, max_new_tokens: int,
                  eos_id: int) -> jax.Array:
  """New tokens [batch, max_new_tokens] after each left-padded prompt; 0 after EOS."""
  batch, prompt_len = tokens.shape
  cfg = dataclasses.replace(model.cfg, max_decode_length=prompt_len + max_new_tokens)
  model = Decoder(cfg)
  cache = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens[:, :1], decode=True))["cache"]
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  logits, vars_ = model.apply({"params": params, "cache": cache}, tokens, mask, positions, decode=True,
                              mutable=["cache"])
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
  out = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(first)
  next_pos = positions[:, -1] + 1

  def cond(carry):
    i, _, _, done, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, cache, out, done, pos = carry
    prev = out[:, i - 1]
    logits, vars_ = model.apply({"params": params, "cache": cache}, prev[:, None], jnp.ones((batch, 1), jnp.int32),
                                pos[:, None], decode=True, mutable=["cache"])
    tok = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    tok = jnp.where(done, 0, tok)
    return i + 1, vars_["cache"], out.at[:, i].set(tok), done | (tok == eos_id), pos + 1

  init = (jnp.array(1), vars_["cache"], out, first == eos_id, next_pos)
  _, _, out, _, _ = jax.lax.while_loop(cond, body, init)
  return out


def strip_eos(row: np.ndarray, eos_id: int) -> list[int]:
  """Tokens up to (not including) the first EOS or padding."""
  out = []
  for t in row.tolist():
    if t in (eos_id, 0):
      break
    out.append(t)
  return out
