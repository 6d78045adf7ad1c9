"""Supervised fine-tuning: token cross-entropy on the targets (`train.objective = @sft()`).

The loss is a weighted sum over target tokens divided by a normalizing factor, chosen as in T5X
(`loss_normalizing_factor`):

- "num_real_target_tokens" (default): mean over the batch's real target tokens;
- "num_total_target_tokens": sum over the batch / (batch x length), padding included;
- "average_per_sequence": each (packed) sequence's mean, averaged over sequences;
- a number: sum over the batch / that constant.

Every factor is a sum over the batch, so gradient accumulation over microbatches gives exactly
the full-batch update. `z_loss` adds z_loss * log(Z)^2 per token (PaLM / T5X), `label_smoothing`
smooths the one-hot targets. `loss_chunk` computes the loss a chunk of tokens at a time, so the
float32 logits of the whole batch never exist at once (`chunked_cross_entropy_sums`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import gin
import jax
import jax.numpy as jnp
import optax

from itjax.errors import UserError, check_int
from itjax.models.families import interface_for
from itjax.models.features import FeatureLayout
from itjax.train.objectives.base import Batch, Sums

LOSS_NORMALIZATIONS = ("num_real_target_tokens", "num_total_target_tokens", "average_per_sequence")
LossNormalization = str | float


def check_loss_normalizing_factor(factor: LossNormalization) -> LossNormalization:
  """Validates (and lower-cases) a `loss_normalizing_factor` setting."""
  if isinstance(factor, str) and factor.lower() in LOSS_NORMALIZATIONS:
    return factor.lower()
  if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0:
    return float(factor)
  raise UserError(f"loss_normalizing_factor={factor!r}: expected a positive number or one of "
                  f"{', '.join(LOSS_NORMALIZATIONS)}")


def decoder_segments(batch: Batch) -> jax.Array:
  """Segment ids of the decoder (target) side: packed ids, or 1 on real target tokens."""
  if "decoder_segment_ids" in batch:
    return batch["decoder_segment_ids"]
  return (batch["decoder_target_tokens"] > 0).astype(jnp.int32)


def per_sequence_weights(weights: jax.Array, segments: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(weights / the token count of their (row, segment), number of sequences with a weighted token)."""
  rows, length = weights.shape
  w = weights.astype(jnp.float32)
  ids = (jnp.arange(rows)[:, None] * (length + 1) + jnp.clip(segments, 0, length)).reshape(-1)
  counts = jax.ops.segment_sum(w.reshape(-1), ids, num_segments=rows * (length + 1))
  per_token = counts[ids].reshape(rows, length)
  return w / jnp.maximum(per_token, 1.0), jnp.sum(counts > 0).astype(jnp.float32)


def cross_entropy_sums(logits, targets, weights, z_loss: float = 0.0, label_smoothing: float = 0.0,
                       loss_weights=None) -> Sums:
  """Weighted sums (loss, z_loss, weight, correct) so microbatches add up exactly.

  `loss_weights` (default `weights`) weight the loss and z_loss; `weights` the token counts and accuracy.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  if label_smoothing:
    soft = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    nll = -jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1)
  else:
    nll = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  zl = z_loss * jnp.square(log_z)
  w = weights.astype(jnp.float32)
  lw = w if loss_weights is None else loss_weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum((nll + zl) * lw), "z_loss": jnp.sum(zl * lw), "weight": jnp.sum(w),
          "correct": jnp.sum(correct * w)}


def chunked_cross_entropy_sums(states: jax.Array, head: Callable[[jax.Array], jax.Array], targets, weights,
                               z_loss: float = 0.0, label_smoothing: float = 0.0, loss_weights=None, *,
                               chunk: int) -> Sums:
  """`cross_entropy_sums(head(states), ...)` without ever holding [batch, length, vocab]: the length is cut into
  chunks of `chunk` tokens, scanned, and each chunk's logits are recomputed in the backward pass (rematerialized)
  instead of stored, so the loss's memory is [batch, chunk, vocab]. Chunks along the length keep the batch axis
  (and its sharding) whole. Equal to the full loss up to float summation order."""
  rows, length = targets.shape
  n = -(-length // chunk)
  lw = weights if loss_weights is None else loss_weights

  def chunks(a):  # [rows, length, ...] -> [n, rows, chunk, ...], zero-padded (zero weight: adds nothing)
    a = jnp.pad(a, [(0, 0), (0, n * chunk - length)] + [(0, 0)] * (a.ndim - 2))
    return jnp.swapaxes(a.reshape(rows, n, chunk, *a.shape[2:]), 0, 1)

  @jax.checkpoint
  def step(total, part):
    x, t, w, lw_part = part
    sums = cross_entropy_sums(head(x), t, w, z_loss, label_smoothing, lw_part)
    return jax.tree.map(jnp.add, total, sums), None

  zero = {k: jnp.zeros((), jnp.float32) for k in ("loss", "z_loss", "weight", "correct")}
  total, _ = jax.lax.scan(step, zero, (chunks(states), chunks(targets), chunks(weights), chunks(lw)))
  return total


def loss_sums(model: Any, params: Any, batch: Batch, z_loss: float = 0.0, label_smoothing: float = 0.0,
              loss_normalizing_factor: LossNormalization = "num_real_target_tokens",
              dropout_rng: jax.Array | None = None, chunk: int | None = None) -> Sums:
  """Summed loss terms of a batch of any family (`model`: an interface, or a config / module); with `chunk`,
  computed `chunk` tokens of the length at a time (`chunked_cross_entropy_sums`)."""
  iface = interface_for(model)
  weights = batch["decoder_loss_weights"]
  loss_weights, sequences = None, jnp.zeros((), jnp.float32)
  if loss_normalizing_factor == "average_per_sequence":
    loss_weights, sequences = per_sequence_weights(weights, decoder_segments(batch))
  targets = batch["decoder_target_tokens"]
  if chunk:
    states = iface.logits(params, batch, dropout_rng=dropout_rng, hidden=True)
    sums = chunked_cross_entropy_sums(states, iface.head(params), targets, weights, z_loss, label_smoothing,
                                      loss_weights, chunk=chunk)
  else:
    logits = iface.logits(params, batch, dropout_rng=dropout_rng)
    sums = cross_entropy_sums(logits, targets, weights, z_loss, label_smoothing, loss_weights)
  return {**sums, "sequences": sequences}


def normalizer(sums: Mapping[str, jax.Array], factor: LossNormalization, batch_shape: tuple[int, ...]) -> jax.Array:
  """What the summed loss is divided by, for a batch of `batch_shape` (rows, length)."""
  if factor == "num_real_target_tokens":
    return jnp.maximum(sums["weight"], 1.0)
  if factor == "num_total_target_tokens":
    return jnp.asarray(float(batch_shape[0] * batch_shape[1]), jnp.float32)
  if factor == "average_per_sequence":
    return jnp.maximum(sums["sequences"], 1.0)
  return jnp.asarray(float(factor), jnp.float32)


@gin.configurable("sft")
@dataclasses.dataclass(frozen=True)
class CrossEntropy:
  """Token cross-entropy on the targets (and chat assistant turns): the SFT objective."""

  z_loss: float = 0.0
  label_smoothing: float = 0.0
  loss_normalizing_factor: LossNormalization = "num_real_target_tokens"
  # Tokens of the length per loss chunk: the loss then never holds [batch, length, vocab] float32 logits
  # (Llama 3's 128,256 vocab at 8 x 8,192 tokens: 33.6 GB), only [batch, chunk, vocab]. None: all at once.
  loss_chunk: int | None = None

  name: ClassVar[str] = "sft"
  frozen_trees: ClassVar[tuple[str, ...]] = ()

  def __post_init__(self):
    object.__setattr__(self, "loss_normalizing_factor", check_loss_normalizing_factor(self.loss_normalizing_factor))
    if not isinstance(self.z_loss, (int, float)) or self.z_loss < 0:
      raise UserError(f"sft.z_loss={self.z_loss!r} must be a number >= 0")
    if not isinstance(self.label_smoothing, (int, float)) or not 0 <= self.label_smoothing < 1:
      raise UserError(f"sft.label_smoothing={self.label_smoothing!r} must be in [0, 1)")
    if self.loss_chunk is not None:
      check_int("sft.loss_chunk", self.loss_chunk, 1)

  def features(self, layout: FeatureLayout) -> tuple[str, ...]:
    return layout.feature_keys

  def batch_lengths(self, layout: FeatureLayout, feature_lengths: Mapping[str, int], pack: bool) -> dict[str, int]:
    return layout.model_lengths(feature_lengths, pack)

  def loss_sums(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any],
                dropout_rng: jax.Array | None) -> Sums:
    return loss_sums(iface, params, batch, self.z_loss, self.label_smoothing, self.loss_normalizing_factor,
                     dropout_rng=dropout_rng, chunk=self.loss_chunk)

  def normalizer(self, sums: Sums, batch_shape: tuple[int, ...]) -> jax.Array:
    return normalizer(sums, self.loss_normalizing_factor, batch_shape)

  def metrics(self, sums: Sums, denom: jax.Array) -> dict[str, jax.Array]:
    tokens = jnp.maximum(sums["weight"], 1.0)
    return {"loss": sums["loss"] / denom, "z_loss": sums["z_loss"] / denom, "accuracy": sums["correct"] / tokens,
            "target_tokens": sums["weight"]}
