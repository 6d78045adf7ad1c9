"""Log-likelihood of given continuations (rank classification, lm-eval loglikelihood).

Each (prompt, continuation) pair becomes one right-padded row of
BOS + prompt + continuation; one forward pass scores a whole batch of rows and
sums the log-probabilities of the continuation tokens only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from itjax.models.decoder import Decoder


@functools.partial(jax.jit, static_argnames=("model",))
def _row_scores(model: Decoder, params, inputs, segments, targets, weights):
  logits = model.apply({"params": params}, inputs, segments)
  logp = jax.nn.log_softmax(logits, axis=-1)
  tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  greedy = jnp.argmax(logits, axis=-1) == targets
  w = weights.astype(jnp.float32)
  return jnp.sum(tok * w, axis=1), jnp.all(greedy | (weights == 0), axis=1)


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


def score_continuations(model: Decoder, params, pairs: Sequence[tuple[list[int], list[int]]],
                        batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(sum log p(continuation | prompt), is_greedy) for each pair, like lm-eval's loglikelihood."""
  scores, greedy = [], []
  for i in range(0, len(pairs), batch_size):
    chunk = list(pairs[i: i + batch_size])
    pad = batch_size - len(chunk)
    s, g = _row_scores(model, params, *build_rows(chunk + [([], [1])] * pad))
    scores.append(np.asarray(s)[: len(chunk)])
    greedy.append(np.asarray(g)[: len(chunk)])
  return np.concatenate(scores), np.concatenate(greedy)
