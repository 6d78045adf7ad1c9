"""Batched greedy decoding for T5 encoder-decoders, with a KV cache.

The encoder runs once; the decoder then emits one token per step for all rows, starting from
`decoder_start_id` (T5: 0, the pad id), in a `lax.while_loop` that ends when every row has
produced EOS or the budget is spent. Encoder padding has segment id 0 (masked in cross-attention).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from itjax.models.t5 import T5


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "decoder_start_id"))
def greedy_decode(model: T5, params, encoder_tokens: jax.Array, encoder_segment_ids: jax.Array | None = None, *,
                  max_new_tokens: int, eos_id: int = 1, decoder_start_id: int = 0) -> jax.Array:
  """New tokens [batch, max_new_tokens] for each encoder input row; EOS kept, 0 after it.

  `encoder_segment_ids` is the encoder mask (1 = token, 0 = padding); None means no padding.
  """
  batch = encoder_tokens.shape[0]
  if encoder_segment_ids is None:
    encoder_segment_ids = jnp.ones_like(encoder_tokens)
  model = T5(dataclasses.replace(model.cfg, max_decode_length=max_new_tokens))
  encoded = model.apply({"params": params}, encoder_tokens, encoder_segment_ids, method=T5.encode)
  start = jnp.full((batch, 1), decoder_start_id, jnp.int32)
  cache = jax.eval_shape(lambda: model.init(jax.random.key(0), encoder_tokens, start, encoder_segment_ids,
                                            decode=True))["cache"]
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)

  def step(i, cache, prev):
    logits, vars_ = model.apply({"params": params, "cache": cache}, encoded, encoder_segment_ids, prev[:, None],
                                decoder_positions=jnp.full((batch, 1), i, jnp.int32), decode=True,
                                mutable=["cache"], method=T5.decode)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), vars_["cache"]

  def cond(carry):
    i, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, cache, out, done = carry
    prev = jnp.where(i == 0, decoder_start_id, out[:, jnp.maximum(i - 1, 0)])
    tok, cache = step(i, cache, prev)
    tok = jnp.where(done, 0, tok)
    return i + 1, cache, out.at[:, i].set(tok), done | (tok == eos_id)

  init = (jnp.array(0, jnp.int32), cache, jnp.zeros((batch, max_new_tokens), jnp.int32), jnp.zeros(batch, bool))
  _, _, out, _ = jax.lax.while_loop(cond, body, init)
  return out
