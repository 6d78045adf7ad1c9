"""PPO against a reward (InstructGPT's stage 3, Ouyang et al. 2022), with a value head and GAE, and PPO-ptx.

Each train step, inside the jitted program: one completion per prompt is sampled with the KV-cached decoding
loop (`rollouts.sample`), rewarded (`ppo.reward`: exact match, or a frozen reward model's score), and turned
into per-token rewards as InstructGPT's: -kl_coef * (log pi_old - log pi_ref) on every completion token, plus
the reward on the last. The critic is a `value` head on the policy's final states (`DecoderConfig.value_head`,
started at zero); advantages are GAE(gamma, lam) over the completion, whitened over the batch, and the
returns are advantages + old values. The loss, per completion token (summed, divided by the batch's
completion tokens):

    -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon) * A)
    + vf_coef * 1/2 max((V - R)^2, (clip(V, V_old - value_epsilon, V_old + value_epsilon) - R)^2)

plus `ptx_coef` times the SFT cross-entropy of the batch's own (prompt, answer) rows (PPO-ptx: InstructGPT mixes
in the pretraining objective; here the task's demonstrations). `epochs` optimizer updates per rollout (the
train step makes them on the batch it prepared): from the second on, the ratio to the rollout policy moves and
the clips act (the clip fractions are the last update's). Sampling keys derive from `seed` and the step, so a
resumed run draws the same rollouts.
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
from itjax.train.objectives.rollouts import SFT_ROWS, Rewards, RolloutObjective, last_weighted, reference_of, sample


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float) -> jax.Array:
  """Generalized advantage estimates [rows, length] over the masked positions (a completion; 0 elsewhere)."""
  next_values = jnp.concatenate([values[:, 1:] * mask[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
  deltas = (rewards + gamma * next_values - values) * mask

  def step(carry, x):
    delta, m = x
    adv = delta + gamma * lam * carry * m
    return adv * m + carry * (1 - m), adv * m

  _, adv = jax.lax.scan(step, jnp.zeros(rewards.shape[0]), (deltas.T, mask.T), reverse=True)
  return adv.T


def _whiten(x: jax.Array, mask: jax.Array) -> jax.Array:
  n = jnp.maximum(mask.sum(), 1.0)
  mean = (x * mask).sum() / n
  var = (jnp.square(x - mean) * mask).sum() / n
  return (x - mean) * jax.lax.rsqrt(var + 1e-8) * mask


def _values(iface: Any, params: Any, batch: Batch, dropout_rng=None) -> tuple[jax.Array, jax.Array]:
  """(logits, values) [rows, length(, vocab)] of the policy and its value head."""
  if "value" not in params:
    raise UserError("train.objective=ppo needs a value head: set DecoderConfig.value_head = True "
                    "(see gin_configs/runs/ppo.gin)")
  states = iface.logits(params, batch, dropout_rng=dropout_rng, hidden=True)
  values = jnp.einsum("ble,eo->blo", states.astype(jnp.float32), params["value"].astype(jnp.float32))[..., 0]
  return iface.head(params)(states), values


@gin.configurable("ppo")
@dataclasses.dataclass(frozen=True)
class PPO(RolloutObjective):
  """PPO(-ptx) with a value head (`train.objective = @ppo()`); see the module docstring."""

  max_new_tokens: int = 16
  temperature: float = 1.0
  kl_coef: float = 0.02  # InstructGPT's beta on the per-token KL to the SFT policy
  gamma: float = 1.0
  lam: float = 0.95
  epsilon: float = 0.2
  value_epsilon: float = 0.2
  vf_coef: float = 0.1
  ptx_coef: float = 0.0  # PPO-ptx: > 0 adds the SFT loss of the batch's demonstrations
  epochs: int = 1  # optimizer updates per rollout (TRL's num_ppo_epochs); > 1 makes the ratio and clips act
  reward: str = "exact_match"
  reward_model: str | None = None
  reward_fn: Any = None  # reward="python": a function (prompts, completions, answers) -> rewards (rollouts.RewardFn)
  eos_id: int = 1
  seed: int = 0

  name: ClassVar[str] = "ppo"

  @property
  def updates_per_batch(self) -> int:
    return self.epochs

  def __post_init__(self):
    check_int("ppo.max_new_tokens", self.max_new_tokens, 1)
    check_int("ppo.epochs", self.epochs, 1)
    for field in ("kl_coef", "vf_coef", "ptx_coef", "epsilon", "value_epsilon"):
      v = getattr(self, field)
      if not isinstance(v, (int, float)) or v < 0:
        raise UserError(f"ppo.{field}={v!r} must be a number >= 0")
    if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
      raise UserError(f"ppo.temperature={self.temperature!r} must be > 0 (sampling)")
    object.__setattr__(self, "_rewards", Rewards(self.reward, self.reward_model, "ppo", self.reward_fn))

  def prepare(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any], step: jax.Array) -> Batch:
    """Rollouts, rewards, old log-probs and values, GAE advantages and returns (no gradient)."""
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    rollout, completions, answers = sample(iface, params, batch, group=1, max_new_tokens=self.max_new_tokens,
                                           temperature=self.temperature, eos_id=self.eos_id, key=key, who="ppo")
    scores = self._rewards(rollout, completions, answers, frozen, self.eos_id)
    logits, values = _values(iface, params, rollout)
    old = token_logps(logits, rollout["decoder_target_tokens"])
    ref = token_logps(iface.logits(reference_of(frozen, "ppo"), rollout), rollout["decoder_target_tokens"])
    w = rollout["decoder_loss_weights"]
    kl = (old - ref) * w
    token_rewards = -self.kl_coef * kl + scores[:, None] * last_weighted(w)
    adv = gae(token_rewards, values, w, self.gamma, self.lam)
    rollout.update(rewards=scores, advantages=_whiten(adv, w), returns=(adv + values) * w, old_values=values,
                   old_logps=old, kl_to_reference=kl, **{f"ptx_{k}": batch[k] for k in SFT_ROWS})
    return jax.lax.stop_gradient(rollout)

  def loss_sums(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any],
                dropout_rng: jax.Array | None) -> Sums:
    logits, values = _values(iface, params, batch, dropout_rng)
    logp = token_logps(logits, batch["decoder_target_tokens"])
    w = batch["decoder_loss_weights"]
    ratio = jnp.exp(logp - batch["old_logps"])
    adv = batch["advantages"]
    pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - self.epsilon, 1 + self.epsilon) * adv)
    v_clip = batch["old_values"] + jnp.clip(values - batch["old_values"], -self.value_epsilon, self.value_epsilon)
    vl = 0.5 * jnp.maximum(jnp.square(values - batch["returns"]), jnp.square(v_clip - batch["returns"]))
    tokens = w.sum()
    loss = ((pg + self.vf_coef * vl) * w).sum()
    out = {}
    if self.ptx_coef > 0:
      ptx = {k: batch[f"ptx_{k}"] for k in SFT_ROWS}
      pw = ptx["decoder_loss_weights"].astype(jnp.float32)
      nll = -(token_logps(iface.logits(params, ptx, dropout_rng=dropout_rng), ptx["decoder_target_tokens"]) * pw)
      ptx_mean = nll.sum() / jnp.maximum(pw.sum(), 1.0)
      loss = loss + self.ptx_coef * ptx_mean * tokens  # per completion token once divided by `tokens`
      out["ptx_loss"] = ptx_mean * tokens
    probs = jax.nn.softmax(logits.astype(jnp.float32))
    entropy = -(probs * jax.nn.log_softmax(logits.astype(jnp.float32))).sum(-1)
    clipped = ((ratio < 1 - self.epsilon) | (ratio > 1 + self.epsilon)).astype(jnp.float32)
    rows = jnp.asarray(w.shape[0], jnp.float32)
    return {"loss": loss, "completion_tokens": tokens, "value_loss": (vl * w).sum(), "entropy": (entropy * w).sum(),
            "clip_fraction": (clipped * w).sum(), "kl": batch["kl_to_reference"].sum(),
            "value_clip_fraction": ((jnp.abs(values - batch["old_values"]) > self.value_epsilon) * w).sum(),
            "reward": batch["rewards"].sum(), "completions": rows, **out}

  def normalizer(self, sums: Sums, batch_shape: tuple[int, ...]) -> jax.Array:
    return jnp.maximum(sums["completion_tokens"], 1.0)

  def metrics(self, sums: Sums, denom: jax.Array) -> dict[str, jax.Array]:
    per_token = {k: sums[k] / denom for k in ("loss", "value_loss", "entropy", "clip_fraction", "kl",
                                                "value_clip_fraction", "ptx_loss") if k in sums}
    # `reward` is a per-completion mean; `kl` is the summed per-token KL per completion.
    return {**per_token, "reward": sums["reward"] / sums["completions"], "kl": sums["kl"] / sums["completions"],
            "completion_length": denom / sums["completions"]}
