"""Batched autoregressive decoding for decoder-only models, with a KV cache.

Prompts are left-padded so that every row's last prompt token sits in the same
column: one prefill call fills the cache, then a `lax.while_loop` emits one
token per step for all rows until each has produced EOS or the budget is
spent. Padding slots have segment id 0, which the attention mask ignores.

Greedy decoding and sampling (temperature, top-k, top-p) share that loop and
differ only in the token chooser, `(logits [batch, vocab], key) -> tokens`.
Beam search (`beam_search`) keeps `num_beams` hypotheses per row instead; see
`itjax.models.beam_search` for its scoring rules.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from itjax.models import beam_search as beams
from itjax.models.decoder import Decoder

# (logits [batch, vocab] float32, PRNG key) -> token ids [batch] int32
TokenChooser = Callable[[jax.Array, jax.Array], jax.Array]


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


def greedy_chooser(logits: jax.Array, key: jax.Array) -> jax.Array:
  """The most likely token (the key is unused)."""
  del key
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def filter_logits(logits: jax.Array, temperature: float | jax.Array = 1.0, top_k: int | jax.Array = 0,
                  top_p: float | jax.Array = 1.0) -> jax.Array:
  """Logits with temperature applied and tokens outside top-k / the top-p nucleus set to the float32 minimum.

  As HF's warpers, in this order: divide by temperature, keep the `top_k` largest (0: all), keep the
  smallest set of most likely tokens whose probability reaches `top_p` (always at least one token;
  tokens tied with the last kept one are kept too). All three may be traced: one compilation serves
  every setting (a sort of the vocabulary per step, small next to the model).
  """
  neg = jnp.finfo(jnp.float32).min
  vocab = logits.shape[-1]
  logits = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  desc = jnp.sort(logits, axis=-1)[..., ::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  desc = jnp.where(jnp.arange(vocab) < k, desc, neg)  # sorted, with everything past the k-th removed
  probs = jax.nn.softmax(desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # Kept: the top-k tokens whose preceding mass is still below top_p (the first always is).
  n_keep = jnp.clip(jnp.sum((mass_before < top_p) & (desc > neg), axis=-1, keepdims=True), 1, k)
  cutoff = jnp.take_along_axis(desc, jnp.broadcast_to(n_keep - 1, desc.shape[:-1] + (1,)), axis=-1)
  return jnp.where(logits < cutoff, neg, logits)


def sampling_chooser(temperature: float | jax.Array = 1.0, top_k: int | jax.Array = 0,
                     top_p: float | jax.Array = 1.0) -> TokenChooser:
  """A chooser that samples from the filtered distribution; temperature 0 means greedy."""

  def choose(logits: jax.Array, key: jax.Array) -> jax.Array:
    sampled = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)

  return choose


def _with_budget(model: Decoder, length: int) -> Decoder:
  """The same model with `length` KV-cache slots (any module with a DecoderConfig-like `cfg`)."""
  return model.clone(cfg=dataclasses.replace(model.cfg, max_decode_length=length))


def _init_cache(model: Decoder, tokens: jax.Array):
  """Zeroed cache collection ({} for a model without one, e.g. a test stub)."""
  cache = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens[:, :1], decode=True)).get("cache", {})
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)


def decode_loop(model: Decoder, params, tokens: jax.Array, mask: jax.Array, choose: TokenChooser, key: jax.Array,
                *, max_new_tokens: int, eos_id: int) -> jax.Array:
  """New tokens [batch, max_new_tokens] after each left-padded prompt; 0 after EOS (call under jit).

  `choose(logits, key)` picks each step's tokens; step i uses `fold_in(key, i)`.
  """
  batch, prompt_len = tokens.shape
  model = _with_budget(model, prompt_len + max_new_tokens)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  logits, vars_ = model.apply({"params": params, "cache": _init_cache(model, tokens)}, tokens, mask, positions,
                              decode=True, mutable=["cache"])
  first = choose(logits[:, -1], jax.random.fold_in(key, 0))
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
    tok = choose(logits[:, -1], jax.random.fold_in(key, i))
    tok = jnp.where(done, 0, tok)
    return i + 1, vars_.get("cache", {}), out.at[:, i].set(tok), done | (tok == eos_id), pos + 1

  init = (jnp.array(1), vars_.get("cache", {}), out, first == eos_id, next_pos)
  _, _, out, _, _ = jax.lax.while_loop(cond, body, init)
  return out


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id"))
def greedy_decode(model: Decoder, params, tokens: jax.Array, mask: jax.Array, *, max_new_tokens: int,
                  eos_id: int) -> jax.Array:
  """New tokens [batch, max_new_tokens] after each left-padded prompt; 0 after EOS."""
  return decode_loop(model, params, tokens, mask, greedy_chooser, jax.random.key(0), max_new_tokens=max_new_tokens,
                     eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id"))
def sample_decode(model: Decoder, params, tokens: jax.Array, mask: jax.Array, key: jax.Array, *, max_new_tokens: int,
                  eos_id: int, temperature: float | jax.Array = 1.0, top_k: int | jax.Array = 0,
                  top_p: float | jax.Array = 1.0) -> jax.Array:
  """Sampled new tokens [batch, max_new_tokens] (0 after EOS); the same key gives the same tokens.

  temperature 0 means greedy, top_k 0 and top_p 1.0 mean off; all three are traced (no recompiles).
  """
  return decode_loop(model, params, tokens, mask, sampling_chooser(temperature, top_k, top_p), key,
                     max_new_tokens=max_new_tokens, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id", "num_beams", "early_stopping"))
def beam_search(model: Decoder, params, tokens: jax.Array, mask: jax.Array, *, max_new_tokens: int, eos_id: int,
                num_beams: int = 4, length_penalty: float | jax.Array = 1.0,
                early_stopping: bool | str = False) -> tuple[jax.Array, jax.Array]:
  """Beam search after left-padded prompts: (tokens [batch, num_beams, max_new_tokens], scores [batch, num_beams]).

  Hypotheses are sorted best first; each keeps its EOS and has 0 after it. Scores are
  sum(log p) / generated_length ** length_penalty, as in HF `generate(num_beams=...)`.
  """
  batch, prompt_len = tokens.shape
  model = _with_budget(model, prompt_len + max_new_tokens)
  tokens, mask = (jnp.repeat(x, num_beams, axis=0) for x in (tokens, mask))
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  cache = _init_cache(model, tokens)
  # Prefill all but the last prompt token; the loop's step 0 feeds the last one.
  if prompt_len > 1:
    _, vars_ = model.apply({"params": params, "cache": cache}, tokens[:, :-1], mask[:, :-1], positions[:, :-1],
                           decode=True, mutable=["cache"])
    cache = vars_.get("cache", {})
  last_pos, last_seg = positions[:, -1], mask[:, -1]

  def step(cache, prev, i):
    seg = jnp.where(i == 0, last_seg, 1)[:, None]
    logits, vars_ = model.apply({"params": params, "cache": cache}, prev[:, None], seg, (last_pos + i)[:, None],
                                decode=True, mutable=["cache"])
    return logits[:, -1], vars_.get("cache", {})

  return beams.search(step, cache, tokens[:, -1], batch=batch, num_beams=num_beams, max_new_tokens=max_new_tokens,
                      eos_id=eos_id, length_penalty=length_penalty, early_stopping=early_stopping,
                      scanned=model.cfg.scan_layers)


def strip_eos(row: np.ndarray, eos_id: int) -> list[int]:
  """Tokens up to (not including) the first EOS or padding."""
  out = []
  for t in row.tolist():
    if t in (eos_id, 0):
      break
    out.append(t)
  return out
