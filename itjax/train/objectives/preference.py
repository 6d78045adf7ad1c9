"""Direct preference objectives: DPO (sigmoid, IPO, hinge), SimPO and ORPO, on batches of (chosen, rejected) pairs.

A preference batch has the family's usual features plus `preference_ids` [rows, length]: 2k+1 on the tokens of
the row's k-th pair's chosen sequence, 2k+2 on its rejected one, 0 elsewhere (`itjax.data`'s preference
converter; chosen and rejected are separate segments, so they never attend to each other). Sequence
log-probabilities are sums of the target-token log-probs over `decoder_loss_weights` (the response tokens) per id.

The losses follow TRL (1.13) term for term, so results compare with it: DPO's log-ratios against a frozen
reference policy — the `reference` tree of a full fine-tune, or, with PEFT, the frozen base without the adapters
(no second copy) — IPO on per-token averages of the log-ratios (as TRL normalizes it), SimPO and ORPO
reference-free on average log-probs. Every loss is a mean over the batch's pairs, accumulated as a sum over
microbatches divided by the pair count.
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

DPO_LOSSES = ("sigmoid", "ipo", "hinge")


def pair_sums(values: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-pair sums of a per-token [rows, length] array: (chosen, rejected), each [rows, length // 2] (pair slots of
  each row; slots without a pair sum to 0)."""
  rows, length = ids.shape
  flat = (jnp.arange(rows)[:, None] * (length + 1) + jnp.clip(ids, 0, length)).reshape(-1)
  sums = jax.ops.segment_sum(values.reshape(-1), flat, num_segments=rows * (length + 1)).reshape(rows, length + 1)
  slots = length // 2
  return sums[:, 1:2 * slots + 1:2], sums[:, 2:2 * slots + 2:2]


def token_logps(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target) per token, float32 [rows, length]."""
  logits = logits.astype(jnp.float32)
  return jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class PairStats:
  """Per pair slot: summed log-probs, response token counts, and whether the slot holds a pair."""

  chosen: jax.Array
  rejected: jax.Array
  chosen_tokens: jax.Array
  rejected_tokens: jax.Array
  valid: jax.Array

  @property
  def chosen_mean(self) -> jax.Array:
    return self.chosen / jnp.maximum(self.chosen_tokens, 1.0)

  @property
  def rejected_mean(self) -> jax.Array:
    return self.rejected / jnp.maximum(self.rejected_tokens, 1.0)


def pair_stats(logits: jax.Array, batch: Batch) -> tuple[PairStats, jax.Array]:
  """(PairStats, per-token weighted log-probs) of a preference batch's logits."""
  ids = batch[PREFERENCE_IDS]
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  logps = token_logps(logits, batch["decoder_target_tokens"]) * weights
  chosen, rejected = pair_sums(logps, ids)
  n_chosen, n_rejected = pair_sums(weights, ids)
  return PairStats(chosen, rejected, n_chosen, n_rejected, (n_chosen > 0) & (n_rejected > 0)), logps


def _sigmoid_loss(x: jax.Array, label_smoothing: float) -> jax.Array:
  """-log sigmoid(x), with label smoothing (the conservative form TRL's sigmoid and SimPO losses share)."""
  return -jax.nn.log_sigmoid(x) * (1 - label_smoothing) - jax.nn.log_sigmoid(-x) * label_smoothing


def dpo_losses(policy: PairStats, reference: PairStats, loss_type: str, beta: float, label_smoothing: float = 0.0
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(per-pair loss, chosen reward, rejected reward) of DPO's `loss_type`; rewards are beta * log-ratios."""
  chosen_ratio, rejected_ratio = policy.chosen - reference.chosen, policy.rejected - reference.rejected
  delta = chosen_ratio - rejected_ratio
  if loss_type == "sigmoid":  # label smoothing: conservative DPO (TRL's "robust" is the unbiased variant)
    loss = _sigmoid_loss(beta * delta, label_smoothing)
  elif loss_type == "ipo":
    avg = (chosen_ratio / jnp.maximum(policy.chosen_tokens, 1.0)
           - rejected_ratio / jnp.maximum(policy.rejected_tokens, 1.0))
    loss = jnp.square(avg - 1.0 / (2.0 * beta))
  else:
    loss = jax.nn.relu(1.0 - beta * delta)
  return loss, beta * chosen_ratio, beta * rejected_ratio


def simpo_losses(policy: PairStats, beta: float, gamma: float, label_smoothing: float = 0.0
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """SimPO: -log sigmoid(beta * (mean logp chosen - mean logp rejected) - gamma); rewards beta * mean logps."""
  logits = policy.chosen_mean - policy.rejected_mean - gamma / beta
  return _sigmoid_loss(beta * logits, label_smoothing), beta * policy.chosen_mean, beta * policy.rejected_mean


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, without cancellation (branch at -log 2)."""
  return jnp.where(x < -0.6931471805599453, jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def orpo_odds(policy: PairStats) -> tuple[jax.Array, jax.Array]:
  """(log sigmoid(log odds ratio), log odds ratio) of chosen over rejected, on mean token log-probs."""
  c, r = policy.chosen_mean, policy.rejected_mean
  log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
  return jax.nn.log_sigmoid(log_odds), log_odds


@gin.configurable("dpo")
@dataclasses.dataclass(frozen=True)
class Preference:
  """A direct preference objective (`train.objective = @dpo()`, `@simpo()` or `@orpo()`)."""

  method: str = "dpo"  # dpo | simpo | orpo
  loss_type: str = "sigmoid"  # DPO: sigmoid | ipo | hinge
  beta: float = 0.1
  label_smoothing: float = 0.0
  gamma: float = 0.5  # SimPO's target margin
  # ORPO: the SFT (chosen NLL) term's weight is 1 and beta weights the odds-ratio term, as in TRL.

  name: ClassVar[str] = "preference"

  def __post_init__(self):
    owner = self.method
    if self.method not in ("dpo", "simpo", "orpo"):
      raise UserError(f"preference method {self.method!r}: expected dpo, simpo or orpo")
    if self.method == "dpo" and self.loss_type not in DPO_LOSSES:
      raise UserError(f"dpo.loss_type={self.loss_type!r}: expected one of {', '.join(DPO_LOSSES)}")
    if not isinstance(self.beta, (int, float)) or self.beta <= 0:
      raise UserError(f"{owner}.beta={self.beta!r} must be a number > 0")
    if not isinstance(self.label_smoothing, (int, float)) or not 0 <= self.label_smoothing < 0.5:
      raise UserError(f"{owner}.label_smoothing={self.label_smoothing!r} must be in [0, 0.5)")

  @property
  def frozen_trees(self) -> tuple[str, ...]:
    return ("reference",) if self.method == "dpo" else ()

  def features(self, layout: FeatureLayout) -> tuple[str, ...]:
    return (*layout.feature_keys, PREFERENCE_IDS)

  def batch_lengths(self, layout: FeatureLayout, feature_lengths: Mapping[str, int], pack: bool) -> dict[str, int]:
    """Rows of whole pairs, twice SFT's length (`itjax.data.preference`); always packed."""
    return preference_lengths(layout, feature_lengths)

  def loss_sums(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any],
                dropout_rng: jax.Array | None) -> Sums:
    policy, logps = pair_stats(iface.logits(params, batch, dropout_rng=dropout_rng), batch)
    valid = policy.valid.astype(jnp.float32)
    pairs = jnp.sum(valid)
    extra = {}
    if self.method == "dpo":
      reference_params = frozen.get("reference", frozen.get("base"))
      if reference_params is None:
        raise UserError("dpo needs a reference policy: a frozen 'reference' tree (full fine-tuning from "
                        "INITIAL_CHECKPOINT_PATH) or a PEFT run's frozen base")
      reference, _ = pair_stats(jax.lax.stop_gradient(iface.logits(reference_params, batch)), batch)
      loss, chosen_reward, rejected_reward = dpo_losses(policy, reference, self.loss_type, self.beta,
                                                        self.label_smoothing)
    elif self.method == "simpo":
      loss, chosen_reward, rejected_reward = simpo_losses(policy, self.beta, self.gamma, self.label_smoothing)
    else:
      ratio, log_odds = orpo_odds(policy)
      chosen_tokens = jnp.sum(policy.chosen_tokens * valid)
      # TRL's NLL is the mean over the (micro)batch's chosen tokens; as a pair-summed term it is that mean x pairs.
      chosen_nll = -jnp.sum(jnp.where(batch[PREFERENCE_IDS] % 2 == 1, logps, 0.0))
      nll = chosen_nll / jnp.maximum(chosen_tokens, 1.0) * pairs
      loss = -self.beta * ratio
      chosen_reward, rejected_reward = self.beta * policy.chosen_mean, self.beta * policy.rejected_mean
      extra = {"nll": nll, "log_odds": jnp.sum(log_odds * valid), "log_odds_ratio": jnp.sum(ratio * valid)}
    total = jnp.sum(loss * valid) + extra.get("nll", 0.0)
    margin = chosen_reward - rejected_reward
    return {"loss": total, "pairs": pairs, "chosen_reward": jnp.sum(chosen_reward * valid),
            "rejected_reward": jnp.sum(rejected_reward * valid), "margin": jnp.sum(margin * valid),
            "correct": jnp.sum((margin > 0) * valid), "chosen_logps": jnp.sum(policy.chosen * valid),
            "rejected_logps": jnp.sum(policy.rejected * valid), **extra}

  def normalizer(self, sums: Sums, batch_shape: tuple[int, ...]) -> jax.Array:
    return jnp.maximum(sums["pairs"], 1.0)

  def metrics(self, sums: Sums, denom: jax.Array) -> dict[str, jax.Array]:
    per_pair = {k: sums[k] / denom for k in sums if k not in ("pairs", "correct")}
    return {**per_pair, "accuracy": sums["correct"] / denom, "pairs": sums["pairs"]}


@gin.configurable("simpo")
def simpo(beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0) -> Preference:
  """SimPO (reference-free, length-normalized): `train.objective = @simpo()`."""
  return Preference(method="simpo", beta=beta, gamma=gamma, label_smoothing=label_smoothing)


@gin.configurable("orpo")
def orpo(beta: float = 0.1) -> Preference:
  """ORPO (odds ratio + the chosen responses' NLL, reference-free): `train.objective = @orpo()`."""
  return Preference(method="orpo", beta=beta)
