"""Batched decoding for T5 encoder-decoders, with a KV cache: greedy, sampling and beam search.

The encoder runs once; the decoder then emits one token per step for all rows, starting from
`decoder_start_id` (T5: 0, the pad id), in a `lax.while_loop` that ends when every row has
produced EOS or the budget is spent. Encoder padding has segment id 0 (masked in cross-attention).
Greedy decoding and sampling share the loop and differ in the token chooser (see `decoding.py`);
beam search (`beam_search`) follows HF `generate(num_beams=N)` (see `itjax.models.beam_search`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from itjax.models import beam_search as beams
from itjax.models.decoding import TokenChooser, greedy_chooser, sampling_chooser
from itjax.models.t5 import T5


def _setup(model: T5, params, encoder_tokens, encoder_segment_ids, max_new_tokens: int, decoder_start_id: int,
           repeat: int = 1):
  """(model with the cache budget, step fn, empty cache); the encoder runs once, its rows then repeat `repeat` times."""
  if encoder_segment_ids is None:
    encoder_segment_ids = jnp.ones_like(encoder_tokens)
  model = T5(dataclasses.replace(model.cfg, max_decode_length=max_new_tokens))
  encoded = model.apply({"params": params}, encoder_tokens, encoder_segment_ids, method=T5.encode)
  encoded, encoder_segment_ids, encoder_tokens = (jnp.repeat(x, repeat, axis=0)
                                                  for x in (encoded, encoder_segment_ids, encoder_tokens))
  batch = encoder_tokens.shape[0]
  start = jnp.full((batch, 1), decoder_start_id, jnp.int32)
  cache = jax.eval_shape(lambda: model.init(jax.random.key(0), encoder_tokens, start, encoder_segment_ids,
                                            decode=True))["cache"]
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)

  def step(cache, prev, i):
    """Logits [batch, vocab] for tokens `prev` [batch] at decoder position i."""
    logits, vars_ = model.apply({"params": params, "cache": cache}, encoded, encoder_segment_ids, prev[:, None],
                                decoder_positions=jnp.full((prev.shape[0], 1), i, jnp.int32), decode=True,
                                mutable=["cache"], method=T5.decode)
    return logits[:, -1], vars_["cache"]

  return model, step, cache


def decode_loop(model: T5, params, encoder_tokens: jax.Array, encoder_segment_ids: jax.Array | None,
                choose: TokenChooser, key: jax.Array, *, max_new_tokens: int, eos_id: int = 1,
                decoder_start_id: int = 0) -> jax.Array:
  """New tokens [batch, max_new_tokens]; EOS kept, 0 after it. Step i uses `fold_in(key, i)` (call under jit)."""
  batch = encoder_tokens.shape[0]
  _, step, cache = _setup(model, params, encoder_tokens, encoder_segment_ids, max_new_tokens, decoder_start_id)

  def cond(carry):
    i, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, cache, out, done = carry
    prev = jnp.where(i == 0, decoder_start_id, out[:, jnp.maximum(i - 1, 0)])
    logits, cache = step(cache, prev, i)
    tok = jnp.where(done, 0, choose(logits, jax.random.fold_in(key, i)))
    return i + 1, cache, out.at[:, i].set(tok), done | (tok == eos_id)

  init = (jnp.array(0, jnp.int32), cache, jnp.zeros((batch, max_new_tokens), jnp.int32), jnp.zeros(batch, bool))
  _, _, out, _ = jax.lax.while_loop(cond, body, init)
  return out


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "decoder_start_id"))
def greedy_decode(model: T5, params, encoder_tokens: jax.Array, encoder_segment_ids: jax.Array | None = None, *,
                  max_new_tokens: int, eos_id: int = 1, decoder_start_id: int = 0) -> jax.Array:
  """New tokens [batch, max_new_tokens] for each encoder input row; EOS kept, 0 after it.

  `encoder_segment_ids` is the encoder mask (1 = token, 0 = padding); None means no padding.
  """
  return decode_loop(model, params, encoder_tokens, encoder_segment_ids, greedy_chooser, jax.random.key(0),
                     max_new_tokens=max_new_tokens, eos_id=eos_id, decoder_start_id=decoder_start_id)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "decoder_start_id"))
def sample_decode(model: T5, params, encoder_tokens: jax.Array, encoder_segment_ids: jax.Array | None, key: jax.Array,
                  *, max_new_tokens: int, eos_id: int = 1, decoder_start_id: int = 0,
                  temperature: float | jax.Array = 1.0, top_k: int | jax.Array = 0,
                  top_p: float | jax.Array = 1.0) -> jax.Array:
  """Sampled new tokens [batch, max_new_tokens] (EOS kept, 0 after); temperature 0 is greedy, same key same output."""
  return decode_loop(model, params, encoder_tokens, encoder_segment_ids, sampling_chooser(temperature, top_k, top_p),
                     key, max_new_tokens=max_new_tokens, eos_id=eos_id, decoder_start_id=decoder_start_id)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "decoder_start_id", "num_beams",
                                             "early_stopping"))
def beam_search(model: T5, params, encoder_tokens: jax.Array, encoder_segment_ids: jax.Array | None = None, *,
                max_new_tokens: int, eos_id: int = 1, decoder_start_id: int = 0, num_beams: int = 4,
                length_penalty: float | jax.Array = 1.0,
                early_stopping: bool | str = False) -> tuple[jax.Array, jax.Array]:
  """(tokens [batch, num_beams, max_new_tokens], scores [batch, num_beams]), best hypothesis first.

  Each hypothesis keeps its EOS and has 0 after it; scores are sum(log p) / length ** length_penalty.
  Matches HF `generate(num_beams=num_beams, do_sample=False, length_penalty=..., early_stopping=...)`.
  """
  batch = encoder_tokens.shape[0]
  model, step, cache = _setup(model, params, encoder_tokens, encoder_segment_ids, max_new_tokens, decoder_start_id,
                              repeat=num_beams)
  start = jnp.full((batch * num_beams,), decoder_start_id, jnp.int32)
  return beams.search(step, cache, start, batch=batch, num_beams=num_beams, max_new_tokens=max_new_tokens,
                      eos_id=eos_id, length_penalty=length_penalty, early_stopping=early_stopping,
                      scanned=model.cfg.scan_layers)
