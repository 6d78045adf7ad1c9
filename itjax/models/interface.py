"""What training and evaluation need from a model, for each architecture (as T5X's `models.py`).

An interface wraps a `Decoder` (decoder-only, seqio's PrefixLM features: BOS + inputs + targets in
one row, loss on the targets) or a `T5` (encoder-decoder, seqio's EncDec features) so that the
trainer, the evaluator, `itjax infer`, the lm-eval backend and `itjax serve` share one code path:
the feature layout its batches have, the batch -> logits function, generation from prompt token
ids, continuation scoring, and how prompts share the context. Each family names its interface
(`itjax.models.families`). Prompts here are a task's `inputs` token ids, as the feature converters see them; an
encoder-decoder's encoder reads them followed by EOS (`T5Config.eos_id`), as it does in training.
With several processes, every process calls these with the same rows (one global computation
over all devices) and gets every result back.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from itjax.models import decoding, enc_dec_decoding, scoring
from itjax.models.decoder import Decoder
from itjax.models.features import ENC_DEC, PREFIX_LM, FeatureLayout
from itjax.models.layers import vocab_logits
from itjax.models.t5 import T5

Batch = Mapping[str, jax.Array]
Pair = tuple[Sequence[int], Sequence[int]]
BOS_ID = 0  # decoder-only rows start with it (PrefixLMFeatureConverter); T5's decoder starts with it too
PAD_MULTIPLE = 32  # prompt lengths are rounded up to this: fewer shapes, fewer compilations


def _sampling_args(temperature: float, top_k: int, top_p: float) -> bool:
  return temperature > 0 or top_k > 0 or top_p < 1.0


def _head(cfg: Any, params) -> Callable[[jax.Array], jax.Array]:
  """The head of a model with `cfg` (tied embedding or lm_head) as a function of its states."""
  weight = nn.meta.unbox(params["embedding"] if cfg.tie_embeddings else params["lm_head"])
  return functools.partial(vocab_logits, weight=weight, tied=cfg.tie_embeddings, dtype=cfg.compute_dtype)


@dataclasses.dataclass(frozen=True)
class DecoderOnly:
  """A Llama-family `Decoder` trained on seqio PrefixLM features (decoder_* keys)."""

  model: Decoder
  # MFU counts 6 x params x tokens: every token passes through all of a decoder's parameters.
  active_param_fraction: ClassVar[float] = 1.0

  @property
  def features(self) -> FeatureLayout:
    return FeatureLayout(PREFIX_LM)

  def prompt_budget(self, context: int, decoder_tokens: int) -> int:
    """Prompt tokens that fit a `context`-token window beside BOS and `decoder_tokens` more tokens."""
    return context - decoder_tokens - 1

  def check_lengths(self, prompt_tokens: int, new_tokens: int, context: int) -> str | None:
    """Why a prompt and a generation budget do not fit the model's context, or None."""
    if prompt_tokens > self.prompt_budget(context, new_tokens):
      return (f"the prompt ({prompt_tokens} tokens) plus max_tokens ({new_tokens}) is over the model's context of "
              f"{context} tokens")
    return None

  def padded_prompt_length(self, prompt_tokens: int) -> int:
    """Length of the row a prompt fills before generation (BOS first)."""
    return prompt_tokens + 1

  def logits(self, params, batch: Batch, *, dropout_rng: jax.Array | None = None, hidden: bool = False
             ) -> jax.Array:
    """[batch, length, vocab] float32 logits for a (packed or not) training batch; with `hidden`, the states
    before the head ([batch, length, embed]: `head` maps them to the logits)."""
    tokens = batch["decoder_input_tokens"]
    if "decoder_segment_ids" in batch:
      segments, positions = batch["decoder_segment_ids"], batch["decoder_positions"]
    else:
      segments = (batch["decoder_target_tokens"] > 0).astype(jnp.int32)
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    # The decoder itself has no dropout; LoRA's (itjax.peft) acts when a dropout RNG is given.
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.model.apply({"params": params}, tokens, segments, positions, hidden=hidden, rngs=rngs)

  def head(self, params) -> Callable[[jax.Array], jax.Array]:
    """States (`logits(..., hidden=True)`, any leading shape) -> float32 logits: the model's own head."""
    return _head(self.model.cfg, params)

  def generate(self, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_id: int,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               pad_multiple: int = PAD_MULTIPLE) -> np.ndarray:
    """New tokens [len(prompts), max_new_tokens] after BOS + each prompt (EOS kept, 0 after).

    The padded prompt length is rounded up to `pad_multiple` (a server passes its length buckets).
    """
    tokens, mask = decoding.left_pad([[BOS_ID, *p] for p in prompts], pad_multiple)
    if _sampling_args(temperature, top_k, top_p):
      out = decoding.sample_decode(self.model, params, tokens, mask, jax.random.key(seed),
                                   max_new_tokens=max_new_tokens, eos_id=eos_id, temperature=temperature,
                                   top_k=top_k, top_p=top_p)
    else:
      out = decoding.greedy_decode(self.model, params, tokens, mask, max_new_tokens=max_new_tokens, eos_id=eos_id)
    return scoring.to_host(out)

  def score(self, params, pairs: Sequence[Pair], *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum log p(continuation | prompt), continuation is the greedy one) per pair."""
    return scoring.score_continuations(self.model, params, pairs, batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class EncoderDecoder:
  """A `T5` trained on seqio EncDec features: inputs -> encoder, targets -> decoder (start token 0)."""

  model: T5
  # Each token passes through about half the parameters (its stack's), for MFU.
  active_param_fraction: ClassVar[float] = 0.5

  @property
  def features(self) -> FeatureLayout:
    return FeatureLayout(ENC_DEC, inputs_eos_id=self.model.cfg.eos_id)

  def prompt_budget(self, context: int, decoder_tokens: int) -> int:
    """The encoder reads the prompt: all of `context`, whatever the decoder generates."""
    del decoder_tokens
    return context

  def check_lengths(self, prompt_tokens: int, new_tokens: int, context: int) -> str | None:
    """Why a generation budget does not fit the decoder, or None (the prompt goes to the encoder)."""
    del prompt_tokens
    return f"max_tokens={new_tokens} is over the model's decoder length ({context})" if new_tokens > context else None

  def padded_prompt_length(self, prompt_tokens: int) -> int:
    return prompt_tokens

  def head(self, params) -> Callable[[jax.Array], jax.Array]:
    """Decoder states (`logits(..., hidden=True)`, any leading shape) -> float32 logits: the model's own head."""
    return _head(self.model.cfg, params)

  def logits(self, params, batch: Batch, *, dropout_rng: jax.Array | None = None, hidden: bool = False
             ) -> jax.Array:
    """[batch, targets length, vocab] float32; dropout (the config's rate) when `dropout_rng` is given; with
    `hidden`, the decoder states before the head ([batch, targets length, embed])."""
    enc, dec = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    if "encoder_segment_ids" in batch:
      segs = (batch["encoder_segment_ids"], batch["decoder_segment_ids"], batch["encoder_positions"],
              batch["decoder_positions"])
    else:  # unpacked: padding is id 0 in the encoder; the decoder's padding only carries zero loss weight
      segs = ((enc > 0).astype(jnp.int32), jnp.ones_like(dec), None, None)
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.model.apply({"params": params}, enc, dec, *segs, deterministic=dropout_rng is None, hidden=hidden,
                            rngs=rngs)

  def generate(self, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_id: int,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               pad_multiple: int = PAD_MULTIPLE) -> np.ndarray:
    """New tokens [len(prompts), max_new_tokens] for each prompt + EOS (EOS kept, 0 after).

    `eos_id` stops generation; the encoder inputs end with the model's own EOS (`T5Config.eos_id`).
    """
    tokens, mask = scoring.right_pad([self.encoder_input(p) for p in prompts], pad_multiple)
    if _sampling_args(temperature, top_k, top_p):
      out = enc_dec_decoding.sample_decode(self.model, params, tokens, mask, jax.random.key(seed),
                                           max_new_tokens=max_new_tokens, eos_id=eos_id, temperature=temperature,
                                           top_k=top_k, top_p=top_p)
    else:
      out = enc_dec_decoding.greedy_decode(self.model, params, tokens, mask, max_new_tokens=max_new_tokens,
                                           eos_id=eos_id)
    return scoring.to_host(out)

  def score(self, params, pairs: Sequence[Pair], *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(self.encoder_input(p), c) for p, c in pairs]
    return scoring.score_enc_dec_continuations(self.model, params, pairs, batch_size=batch_size)

  def encoder_input(self, prompt: Sequence[int]) -> list[int]:
    """What the encoder reads for a prompt: its ids and EOS (`EncDecConverter` appends it in training)."""
    return [*prompt, self.model.cfg.eos_id]


ModelInterface = DecoderOnly | EncoderDecoder
