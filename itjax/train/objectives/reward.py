"""A reward model from preferences (InstructGPT's stage 2): a scalar score per sequence, trained so that
r(prompt, better) > r(prompt, worse) on every ranked pair.

The model is a decoder with `DecoderConfig.score_head = True` (HF's `*ForSequenceClassification`, one label):
the reward of a sequence is the score at its last position, whose state has read the prompt and the whole
response but for the final EOS (the row's inputs are seqio's shifted targets), i.e. HF's score of input ids
`[0] + prompt + response` pooled at the last token that is not `pad_token_id` 0. A batch is the preference
rows of `itjax.data.preference`: a ranking's K(K-1)/2 pairs arrive together, and the loss is
-log sigmoid(r_better - r_worse) averaged over the batch's pairs (InstructGPT's 1/C(K,2) sum over a prompt's
pairs, for prompts of equal K). Accuracy is the share of pairs ranked right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import gin
import jax
import jax.numpy as jnp

from itjax.errors import UserError
from itjax.models.features import PREFERENCE_IDS, FeatureLayout, preference_lengths
from itjax.train.objectives.base import Batch, Sums
from itjax.train.objectives.preference import pair_sums


def last_positions(ids: jax.Array) -> jax.Array:
  """1.0 at each segment's last position of [rows, length] segment ids (0 = padding), else 0.0."""
  following = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
  return ((ids > 0) & (ids != following)).astype(jnp.float32)


def sequence_rewards(iface: Any, params: Any, batch: Batch, dropout_rng: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(chosen reward, rejected reward, valid) per pair slot [rows, length // 2] of a preference batch."""
  scores = iface.logits(params, batch, dropout_rng=dropout_rng)
  if scores.shape[-1] != 1:
    raise UserError("train.objective=@reward() needs a reward model: set DecoderConfig.score_head = True (a "
                    "scalar score head in place of the LM head; see gin_configs/runs/reward.gin)")
  ids = batch[PREFERENCE_IDS]
  last = last_positions(ids)
  chosen, rejected = pair_sums(scores[..., 0] * last, ids)
  n_chosen, n_rejected = pair_sums(last, ids)
  return chosen, rejected, (n_chosen > 0) & (n_rejected > 0)


@gin.configurable("reward")
@dataclasses.dataclass(frozen=True)
class RewardModel:
  """The pairwise reward-model objective (`train.objective = @reward()`)."""

  margin: float = 0.0  # an optional target margin: -log sigmoid(r_c - r_r - margin) (Llama 2 uses graded ones)

  name: ClassVar[str] = "reward"
  frozen_trees: ClassVar[tuple[str, ...]] = ()

  def features(self, layout: FeatureLayout) -> tuple[str, ...]:
    return (*layout.feature_keys, PREFERENCE_IDS)

  def batch_lengths(self, layout: FeatureLayout, feature_lengths: Mapping[str, int], pack: bool) -> dict[str, int]:
    return preference_lengths(layout, feature_lengths)

  def loss_sums(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any],
                dropout_rng: jax.Array | None) -> Sums:
    chosen, rejected, valid = sequence_rewards(iface, params, batch, dropout_rng)
    valid = valid.astype(jnp.float32)
    diff = chosen - rejected
    loss = -jax.nn.log_sigmoid(diff - self.margin)
    return {"loss": jnp.sum(loss * valid), "pairs": jnp.sum(valid), "correct": jnp.sum((diff > 0) * valid),
            "chosen_reward": jnp.sum(chosen * valid), "rejected_reward": jnp.sum(rejected * valid),
            "margin": jnp.sum(diff * valid)}

  def normalizer(self, sums: Sums, batch_shape: tuple[int, ...]) -> jax.Array:
    return jnp.maximum(sums["pairs"], 1.0)

  def metrics(self, sums: Sums, denom: jax.Array) -> dict[str, jax.Array]:
    out = {k: sums[k] / denom for k in ("loss", "chosen_reward", "rejected_reward", "margin")}
    return {**out, "accuracy": sums["correct"] / denom, "pairs": sums["pairs"]}
