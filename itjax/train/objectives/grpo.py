"""GRPO (Shao et al. 2024, DeepSeekMath): policy-gradient RL with group-relative advantages and no critic.

Each train step, inside the same jitted program: every prompt of the batch is sampled `group_size` times with
the model's KV-cached decoding (`itjax.models.decoding.decode_loop`, temperature `temperature`); each
completion gets a reward; its advantage is (reward - the group's mean) / (the group's std + 1e-4), as TRL's
`scale_rewards="group"`; then one gradient step on

    per token: -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon) * A) + beta * KL_k3(policy || reference)

averaged over each completion's tokens (up to and including its EOS), then over completions (the paper's
sequence-mean). One update per rollout, so the ratio is exp(logp - stop_gradient(logp)) = 1 with the policy
gradient's value. KL_k3 = exp(ref - logp) - (ref - logp) - 1 per token, against the frozen reference (the
INITIAL_CHECKPOINT_PATH policy, or a PEFT run's base without the adapters, as DPO's).

Prompts and reference answers come from the SFT rows of the task (unpacked: `stream_settings.pack = False`):
the prompt is BOS + the row's inputs, the answer its targets. Rewards (`reward`):

- "exact_match": 1 when the completion equals the reference answer token for token (EOS included), else 0 —
  a verifiable reward for tasks with one right answer (sums, copying);
- "python": `grpo.reward_fn`, any Python function of (prompts, completions, answers) as token-id lists ->
  one reward each, run on the host once per step (`rollouts.python_rewards`; e.g. `@token_f1`);
- "model": the score of a reward model (`grpo.reward_model`: its checkpoint, trained with `@reward()`, frozen)
  for prompt + completion, at the position whose target is the completion's last token (its EOS), as the reward
  model was trained.

Sampling keys derive from `seed` and the step, so a resumed run draws the same rollouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import gin
import jax
import jax.numpy as jnp

from itjax.errors import UserError, check_int
from itjax.train.objectives.base import Batch, Sums
from itjax.train.objectives.preference import token_logps
from itjax.train.objectives.rollouts import Rewards, RolloutObjective, reference_of, sample


def group_advantages(rewards: jax.Array, group_size: int, eps: float = 1e-4) -> jax.Array:
  """(reward - group mean) / (group std + eps) for rewards laid out group by group."""
  r = rewards.reshape(-1, group_size)
  return ((r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, keepdims=True) + eps)).reshape(-1)


@gin.configurable("grpo")
@dataclasses.dataclass(frozen=True)
class GRPO(RolloutObjective):
  """Group-relative policy optimization (`train.objective = @grpo()`); see the module docstring."""

  group_size: int = 4
  max_new_tokens: int = 16
  temperature: float = 1.0
  beta: float = 0.04  # KL weight (TRL's and DeepSeekMath's default)
  epsilon: float = 0.2  # ratio clip
  reward: str = "exact_match"
  reward_model: str | None = None  # reward="model": a reward model's checkpoint (step dir or MODEL_DIR)
  reward_fn: Any = None  # reward="python": a function (prompts, completions, answers) -> rewards (rollouts.RewardFn)
  eos_id: int = 1
  seed: int = 0

  name: ClassVar[str] = "grpo"

  def __post_init__(self):
    check_int("grpo.group_size", self.group_size, 2)
    check_int("grpo.max_new_tokens", self.max_new_tokens, 1)
    if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
      raise UserError(f"grpo.temperature={self.temperature!r} must be > 0 (sampling)")
    if not isinstance(self.beta, (int, float)) or self.beta < 0:
      raise UserError(f"grpo.beta={self.beta!r} must be >= 0")
    object.__setattr__(self, "_rewards", Rewards(self.reward, self.reward_model, "grpo", self.reward_fn))

  def prepare(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any], step: jax.Array) -> Batch:
    """Rollouts, rewards, advantages and reference log-probs for the batch's prompts (no gradient)."""
    g = self.group_size
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    rollout, completions, answers = sample(iface, params, batch, group=g, max_new_tokens=self.max_new_tokens,
                                           temperature=self.temperature, eos_id=self.eos_id, key=key, who="grpo")
    rewards = self._rewards(rollout, completions, answers, frozen, self.eos_id)
    rollout.update(rewards=rewards, advantages=group_advantages(rewards, g))
    reference = reference_of(frozen, "grpo")
    rollout["reference_logps"] = token_logps(iface.logits(reference, rollout), rollout["decoder_target_tokens"])
    return jax.lax.stop_gradient(rollout)

  def loss_sums(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any],
                dropout_rng: jax.Array | None) -> Sums:
    logits = iface.logits(params, batch, dropout_rng=dropout_rng)
    logp = token_logps(logits, batch["decoder_target_tokens"])
    w = batch["decoder_loss_weights"]
    ratio = jnp.exp(logp - jax.lax.stop_gradient(logp))
    adv = batch["advantages"][:, None]
    clipped = jnp.clip(ratio, 1 - self.epsilon, 1 + self.epsilon)
    pg = -jnp.minimum(ratio * adv, clipped * adv)
    delta = batch["reference_logps"] - logp
    kl = jnp.exp(delta) - delta - 1.0
    n = jnp.maximum(w.sum(axis=1), 1.0)
    per_seq = ((pg + self.beta * kl) * w).sum(axis=1) / n
    probs = jax.nn.softmax(logits.astype(jnp.float32))
    entropy = -(probs * jax.nn.log_softmax(logits.astype(jnp.float32))).sum(-1)
    clip = ((ratio < 1 - self.epsilon) | (ratio > 1 + self.epsilon)).astype(jnp.float32)
    return {"loss": per_seq.sum(), "completions": jnp.asarray(w.shape[0], jnp.float32),
            "reward": batch["rewards"].sum(), "kl": ((kl * w).sum(axis=1) / n).sum(),
            "entropy": ((entropy * w).sum(axis=1) / n).sum(), "clip_fraction": ((clip * w).sum(axis=1) / n).sum(),
            "completion_tokens": w.sum(), "reward_sq": jnp.square(batch["rewards"]).sum()}

  def normalizer(self, sums: Sums, batch_shape: tuple[int, ...]) -> jax.Array:
    return sums["completions"]

  def metrics(self, sums: Sums, denom: jax.Array) -> dict[str, jax.Array]:
    mean = sums["reward"] / denom
    return {"loss": sums["loss"] / denom, "reward": mean,
            "reward_std": jnp.sqrt(jnp.maximum(sums["reward_sq"] / denom - mean**2, 0.0)),
            "kl": sums["kl"] / denom, "entropy": sums["entropy"] / denom,
            "clip_fraction": sums["clip_fraction"] / denom, "completion_length": sums["completion_tokens"] / denom}
