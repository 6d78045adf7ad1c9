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

from itjax.core.model_dir import load_model_config
from itjax.errors import UserError, check_int
from itjax.models import decoding
from itjax.models.families import interface_for
from itjax.models.features import PREFIX_LM, FeatureLayout
from itjax.train.objectives.base import Batch, Sums
from itjax.train.objectives.preference import token_logps

REWARDS = ("exact_match", "model")


def left_aligned_prompts(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(prompt tokens, mask) left-padded [rows, length] (BOS + inputs, ending in one column) and the reference
  answers [rows, length] (targets, right-padded with 0) of unpacked PrefixLM rows."""
  inputs, targets, weights = batch["decoder_input_tokens"], batch["decoder_target_tokens"], batch[
      "decoder_loss_weights"]
  rows, length = inputs.shape
  prompt_len = jnp.argmax(weights > 0, axis=1) + 1  # BOS + the inputs: input positions before the first target
  shift = length - prompt_len
  src = jnp.arange(length)[None, :] - shift[:, None]
  mask = (src >= 0).astype(jnp.int32)
  prompts = jnp.take_along_axis(inputs, jnp.clip(src, 0, length - 1), axis=1) * mask
  ans_src = jnp.arange(length)[None, :] + (prompt_len - 1)[:, None]
  answers = jnp.take_along_axis(targets * weights, jnp.clip(ans_src, 0, length - 1), axis=1)
  answers = jnp.where(ans_src < length, answers, 0)
  return prompts, mask, answers


def completion_mask(completions: jax.Array, eos_id: int) -> jax.Array:
  """1 on each completion's tokens up to and including its first EOS (decoding writes 0 after it)."""
  before = jnp.cumsum(completions == eos_id, axis=1) - (completions == eos_id)
  return ((before == 0) & (completions > 0)).astype(jnp.float32)


def exact_match(completions: jax.Array, answers: jax.Array, eos_id: int) -> jax.Array:
  """1.0 where a completion equals its answer token for token (both up to their EOS), else 0.0."""
  width = max(completions.shape[1], answers.shape[1])
  pad = lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[1])))  # noqa: E731
  c = pad(completions * completion_mask(completions, eos_id).astype(completions.dtype))
  a = pad(answers * completion_mask(answers, eos_id).astype(answers.dtype))
  return jnp.all(c == a, axis=1).astype(jnp.float32)


def group_advantages(rewards: jax.Array, group_size: int, eps: float = 1e-4) -> jax.Array:
  """(reward - group mean) / (group std + eps) for rewards laid out group by group."""
  r = rewards.reshape(-1, group_size)
  return ((r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, keepdims=True) + eps)).reshape(-1)


@gin.configurable("grpo")
@dataclasses.dataclass(frozen=True)
class GRPO:
  """Group-relative policy optimization (`train.objective = @grpo()`); see the module docstring."""

  group_size: int = 4
  max_new_tokens: int = 16
  temperature: float = 1.0
  beta: float = 0.04  # KL weight (TRL's and DeepSeekMath's default)
  epsilon: float = 0.2  # ratio clip
  reward: str = "exact_match"
  reward_model: str | None = None  # reward="model": a reward model's checkpoint (step dir or MODEL_DIR)
  eos_id: int = 1
  seed: int = 0

  name: ClassVar[str] = "grpo"

  def __post_init__(self):
    check_int("grpo.group_size", self.group_size, 2)
    check_int("grpo.max_new_tokens", self.max_new_tokens, 1)
    if self.reward not in REWARDS:
      raise UserError(f"grpo.reward={self.reward!r}: expected one of {', '.join(REWARDS)}")
    if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
      raise UserError(f"grpo.temperature={self.temperature!r} must be > 0 (sampling)")
    if not isinstance(self.beta, (int, float)) or self.beta < 0:
      raise UserError(f"grpo.beta={self.beta!r} must be >= 0")
    if (self.reward == "model") != (self.reward_model is not None):
      raise UserError("grpo.reward='model' needs grpo.reward_model (a reward model's checkpoint), and "
                      "grpo.reward_model applies only with grpo.reward='model'")
    if self.reward_model is not None:
      cfg = load_model_config(self.reward_model)
      if not getattr(cfg, "score_head", False):
        raise UserError(f"grpo.reward_model={self.reward_model!r} is not a reward model (its config has no "
                        "score_head; train one with gin_configs/runs/reward.gin)")
      object.__setattr__(self, "_reward_config", cfg)

  @property
  def frozen_trees(self) -> tuple[str, ...]:
    return ("reference", "reward_model") if self.reward == "model" else ("reference",)

  def frozen_models(self) -> dict[str, tuple[Any, str]]:
    """The frozen reward model the builder loads beside the reference: {name: (config, checkpoint)}."""
    return {"reward_model": (self._reward_config, self.reward_model)} if self.reward == "model" else {}

  def features(self, layout: FeatureLayout) -> tuple[str, ...]:
    if layout.kind != PREFIX_LM:
      raise UserError("train.objective=grpo samples with the decoder-only model interface; encoder-decoders are "
                      "not supported yet")
    return ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")

  def batch_lengths(self, layout: FeatureLayout, feature_lengths: Mapping[str, int], pack: bool) -> dict[str, int]:
    if pack:
      raise UserError("train.objective=grpo reads one prompt per row: set stream_settings.pack = False")
    return layout.model_lengths(feature_lengths, pack=False)

  def prepare(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any], step: jax.Array) -> Batch:
    """Rollouts, rewards, advantages and reference log-probs for the batch's prompts (no gradient)."""
    if "decoder_segment_ids" in batch:
      raise UserError("train.objective=grpo reads one prompt per row: set stream_settings.pack = False")
    prompts, mask, answers = left_aligned_prompts(batch)
    g = self.group_size
    prompts, mask, answers = (jnp.repeat(x, g, axis=0) for x in (prompts, mask, answers))
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    completions = decoding.decode_loop(iface.model, params, prompts, mask,
                                       decoding.sampling_chooser(self.temperature), key,
                                       max_new_tokens=self.max_new_tokens, eos_id=self.eos_id)
    keep = completion_mask(completions, self.eos_id)
    tokens = jnp.concatenate([prompts, completions * keep.astype(completions.dtype)], axis=1)
    seg = jnp.concatenate([mask, keep.astype(jnp.int32)], axis=1)
    rollout = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
               "decoder_segment_ids": seg[:, :-1], "decoder_positions": jnp.maximum(jnp.cumsum(seg, 1) - 1, 0)[:, :-1],
               # the targets that are completion tokens: positions prompt_len-1 .. (shifted by one)
               "decoder_loss_weights": jnp.concatenate([jnp.zeros_like(mask[:, 1:], jnp.float32), keep], axis=1),
               }
    if self.reward == "model":
      w = rollout["decoder_loss_weights"]
      last = w * (1.0 - jnp.concatenate([w[:, 1:], jnp.zeros_like(w[:, :1])], axis=1))
      scores = interface_for(self._reward_config).logits(frozen["reward_model"], rollout)[..., 0]
      rewards = (scores * last).sum(axis=1)
    else:
      rewards = exact_match(completions, answers, self.eos_id)
    rollout.update(rewards=rewards, advantages=group_advantages(rewards, g))
    reference = frozen.get("reference", frozen.get("base"))
    if reference is None:
      raise UserError("grpo needs a reference policy: a frozen 'reference' tree (full fine-tuning from "
                      "INITIAL_CHECKPOINT_PATH) or a PEFT run's frozen base")
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
