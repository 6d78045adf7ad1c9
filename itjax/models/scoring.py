"""Log-likelihood of given continuations (rank classification, lm-eval loglikelihood).

Decoder-only: each (prompt, continuation) pair becomes one right-padded row of
BOS + prompt + continuation. Encoder-decoder: the prompt is the encoder row and
the continuation the decoder targets (decoder input: 0 + continuation[:-1]).
One forward pass scores a whole batch of rows and sums the log-probabilities of
the continuation tokens only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from itjax.models.decoder import Decoder
from itjax.models.t5 import T5


def to_host(x) -> np.ndarray:
  """A jax.Array as numpy on every process; shards held by other processes are gathered (a collective:
  with several processes, every process must call it, as they all run the same batches)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _token_scores(logits, targets, weights):
  """(sum of weighted target log-probs, every weighted target is the argmax) per row."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  greedy = jnp.argmax(logits, axis=-1) == targets
  w = weights.astype(jnp.float32)
  return jnp.sum(tok * w, axis=1), jnp.all(greedy | (weights == 0), axis=1)


@functools.partial(jax.jit, static_argnames=("model",))
def _row_scores(model: Decoder, params, inputs, segments, targets, weights):
  return _token_scores(model.apply({"params": params}, inputs, segments), targets, weights)


@functools.partial(jax.jit, static_argnames=("model",))
def _enc_dec_row_scores(model: T5, params, enc, enc_segments, dec_inputs, targets, weights):
  logits = model.apply({"params": params}, enc, dec_inputs, enc_segments, (weights > 0).astype(jnp.int32))
  return _token_scores(logits, targets, weights)


def right_pad(rows: Sequence[Sequence[int]], multiple: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, mask) [len(rows), length], length rounded up to `multiple` (fewer recompiles)."""
  length = -(-max(max(len(r) for r in rows), 1) // multiple) * multiple
  tokens = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  mask = (np.arange(length)[None, :] < np.array([len(r) for r in rows])[:, None]).astype(np.int32)
  return tokens, mask


def build_rows(pairs: Sequence[tuple[list[int], list[int]]], multiple: int = 32):
  """(inputs, segments, targets, weights) [rows, length]: teacher forcing, weights on continuations only."""
  length = max(1 + len(p) + len(c) for p, c in pairs)
  length = -(-length // multiple) * multiple
  inputs = np.zeros((len(pairs), length), np.int32)
  targets = np.zeros_like(inputs)
  weights = np.zeros_like(inputs)
  segments = np.zeros_like(inputs)
  for i, (p, c) in enumerate(pairs):
    seq = [0] + list(p) + list(c)  # BOS (id 0) first, as PrefixLMFeatureConverter builds training rows
    inputs[i, : len(seq) - 1] = seq[:-1]
    targets[i, : len(seq) - 1] = seq[1:]
    weights[i, len(p): len(seq) - 1] = 1
    segments[i, : len(seq) - 1] = 1
  return inputs, segments, targets, weights


def build_enc_dec_rows(pairs: Sequence[tuple[list[int], list[int]]], multiple: int = 32):
  """(encoder tokens, encoder mask, decoder inputs, targets, weights): teacher forcing on the continuations."""
  enc, enc_mask = right_pad([list(p) for p, _ in pairs], multiple)
  targets, weights = right_pad([list(c) for _, c in pairs], multiple)
  dec_inputs = np.zeros_like(targets)
  dec_inputs[:, 1:] = targets[:, :-1]  # decoder start token 0, then the continuation shifted right
  return enc, enc_mask, dec_inputs, targets, weights


def _score_batches(row_scores, build, pairs, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  scores, greedy = [], []
  for i in range(0, len(pairs), batch_size):
    chunk = list(pairs[i: i + batch_size])
    pad = batch_size - len(chunk)
    s, g = row_scores(*build(chunk + [([1], [1])] * pad))
    scores.append(to_host(s)[: len(chunk)])
    greedy.append(to_host(g)[: len(chunk)])
  if not scores:
    return np.zeros(0, np.float32), np.zeros(0, bool)
  return np.concatenate(scores), np.concatenate(greedy)


def score_continuations(model: Decoder, params, pairs: Sequence[tuple[list[int], list[int]]],
                        batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(sum log p(continuation | prompt), is_greedy) for each pair, like lm-eval's loglikelihood."""
  return _score_batches(functools.partial(_row_scores, model, params), build_rows, pairs, batch_size)


def score_enc_dec_continuations(model: T5, params, pairs: Sequence[tuple[list[int], list[int]]],
                                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """As `score_continuations`, for an encoder-decoder: prompt -> encoder, continuation -> decoder."""
  return _score_batches(functools.partial(_enc_dec_row_scores, model, params), build_enc_dec_rows, pairs,
                        batch_size)
