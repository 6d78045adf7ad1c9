"""What RL objectives share: prompts from SFT rows, sampled completions inside the step, and their rewards.

`sample` turns a batch of unpacked PrefixLM rows into rollouts: each prompt (BOS + the row's inputs) sampled
`group` times with the model's KV-cached decoding loop (`itjax.models.decoding.decode_loop`), laid out as rows
the model reads (prompt and completion one segment, loss weights on the completion's tokens up to and
including its EOS). `Rewards` scores them: "exact_match" against the row's answer (its targets), or "model",
the score of a frozen reward model (`@reward()`) at the position whose target is the completion's last token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from itjax.core.model_dir import load_model_config
from itjax.errors import UserError
from itjax.models import decoding
from itjax.models.families import interface_for
from itjax.models.features import PREFIX_LM, FeatureLayout
from itjax.train.objectives.base import Batch

REWARDS = ("exact_match", "model", "python")
# A Python reward function (reward="python"): (prompts, completions, answers) as token-id lists (completions up to
# and including EOS) -> one float per completion; it runs on the host (`jax.pure_callback`), once per step.
RewardFn = Callable[[list[list[int]], list[list[int]], list[list[int]]], Sequence[float]]


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


def sample(iface: Any, params: Any, batch: Batch, *, group: int, max_new_tokens: int, temperature: float,
           eos_id: int, key: jax.Array, who: str) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
  """(rollout rows, completions [rows * group, max_new_tokens], answers) for a batch of unpacked SFT rows."""
  if "decoder_segment_ids" in batch:
    raise UserError(f"train.objective={who} reads one prompt per row: set stream_settings.pack = False")
  prompts, mask, answers = left_aligned_prompts(batch)
  prompts, mask, answers = (jnp.repeat(x, group, axis=0) for x in (prompts, mask, answers))
  completions = decoding.decode_loop(iface.model, params, prompts, mask, decoding.sampling_chooser(temperature), key,
                                     max_new_tokens=max_new_tokens, eos_id=eos_id)
  keep = completion_mask(completions, eos_id)
  tokens = jnp.concatenate([prompts, completions * keep.astype(completions.dtype)], axis=1)
  seg = jnp.concatenate([mask, keep.astype(jnp.int32)], axis=1)
  rollout = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
             "decoder_segment_ids": seg[:, :-1], "decoder_positions": jnp.maximum(jnp.cumsum(seg, 1) - 1, 0)[:, :-1],
             # the targets that are completion tokens (a completion token at column P + i is target P + i - 1)
             "decoder_loss_weights": jnp.concatenate([jnp.zeros_like(mask[:, 1:], jnp.float32), keep], axis=1)}
  return rollout, completions, answers


def last_weighted(weights: jax.Array) -> jax.Array:
  """1.0 at each row's last position with a loss weight (the completion's last token as a target)."""
  return weights * (1.0 - jnp.concatenate([weights[:, 1:], jnp.zeros_like(weights[:, :1])], axis=1))


def reference_of(frozen: Mapping[str, Any], who: str) -> Any:
  reference = frozen.get("reference", frozen.get("base"))
  if reference is None:
    raise UserError(f"{who} needs a reference policy: a frozen 'reference' tree (full fine-tuning from "
                    "INITIAL_CHECKPOINT_PATH) or a PEFT run's frozen base")
  return reference


@dataclasses.dataclass(frozen=True)
class Rewards:
  """How rollouts are rewarded (the `reward` / `reward_model` settings of an RL objective)."""

  kind: str = "exact_match"
  reward_model: str | None = None  # kind="model": a reward model's checkpoint (step dir or MODEL_DIR)
  who: str = "grpo"
  fn: RewardFn | None = None  # kind="python"

  def __post_init__(self):
    if self.kind not in REWARDS:
      raise UserError(f"{self.who}.reward={self.kind!r}: expected one of {', '.join(REWARDS)}")
    if (self.kind == "model") != (self.reward_model is not None):
      raise UserError(f"{self.who}.reward='model' needs {self.who}.reward_model (a reward model's checkpoint), and "
                      f"{self.who}.reward_model applies only with {self.who}.reward='model'")
    if (self.kind == "python") != (self.fn is not None):
      raise UserError(f"{self.who}.reward='python' needs {self.who}.reward_fn (a Python function, e.g. "
                      f"{self.who}.reward_fn = @token_f1), and {self.who}.reward_fn applies only with reward='python'")
    if self.fn is not None and not callable(self.fn):
      raise UserError(f"{self.who}.reward_fn={self.fn!r} is not callable")
    if self.reward_model is not None:
      cfg = load_model_config(self.reward_model)
      if not getattr(cfg, "score_head", False):
        raise UserError(f"{self.who}.reward_model={self.reward_model!r} is not a reward model (its config has no "
                        "score_head; train one with gin_configs/runs/reward.gin)")
      object.__setattr__(self, "config", cfg)

  @property
  def frozen_trees(self) -> tuple[str, ...]:
    return ("reward_model",) if self.kind == "model" else ()

  def frozen_models(self) -> dict[str, tuple[Any, str]]:
    return {"reward_model": (self.config, self.reward_model)} if self.kind == "model" else {}

  def __call__(self, rollout: Mapping[str, jax.Array], completions: jax.Array, answers: jax.Array,
               frozen: Mapping[str, Any], eos_id: int) -> jax.Array:
    """One reward per rollout row."""
    if self.kind == "model":
      scores = interface_for(self.config).logits(frozen["reward_model"], rollout)[..., 0]
      return (scores * last_weighted(rollout["decoder_loss_weights"])).sum(axis=1)
    if self.kind == "python":
      return python_rewards(self.fn, rollout, completions, answers, eos_id)
    return exact_match(completions, answers, eos_id)


def python_rewards(fn: RewardFn, rollout: Mapping[str, jax.Array], completions: jax.Array, answers: jax.Array,
                   eos_id: int) -> jax.Array:
  """`fn` of each rollout's (prompt, completion, answer) token lists, on the host, as a [rows] float32 array."""
  keep = completion_mask(completions, eos_id)
  answer_keep = completion_mask(answers, eos_id)
  seg, tokens = rollout["decoder_segment_ids"], rollout["decoder_input_tokens"]
  width = completions.shape[1]
  prompt_mask = seg[:, :tokens.shape[1] - width + 1]  # the prompt columns (left-padded; BOS first)

  def host(prompt, prompt_mask, completions, keep, answers, answer_keep):
    lists = lambda x, m, skip=0: [[int(t) for t, k in zip(r, mr, strict=True) if k][skip:]  # noqa: E731
                                  for r, mr in zip(x, m, strict=True)]
    out = fn(lists(prompt, prompt_mask, 1), lists(completions, keep), lists(answers, answer_keep))
    out = np.asarray(out, np.float32)
    if out.shape != (completions.shape[0],):
      raise UserError(f"reward_fn returned {out.shape} rewards for {completions.shape[0]} completions")
    return out

  return jax.pure_callback(host, jax.ShapeDtypeStruct((completions.shape[0],), jnp.float32),
                           tokens[:, :prompt_mask.shape[1]], prompt_mask, completions, keep, answers, answer_keep)


SFT_ROWS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


class RolloutObjective:
  """What GRPO and PPO share: unpacked SFT rows in, a frozen reference (and reward model) beside the policy.
  Subclasses set `name` and, in `__post_init__`, `_rewards` (a `Rewards`)."""

  name: str
  _rewards: Rewards

  @property
  def frozen_trees(self) -> tuple[str, ...]:
    return ("reference", *self._rewards.frozen_trees)

  def frozen_models(self) -> dict[str, tuple[Any, str]]:
    """The frozen reward model the builder loads beside the reference: {name: (config, checkpoint)}."""
    return self._rewards.frozen_models()

  def features(self, layout: FeatureLayout) -> tuple[str, ...]:
    if layout.kind != PREFIX_LM:
      raise UserError(f"train.objective={self.name} samples with the decoder-only model interface; "
                      "encoder-decoders are not supported yet")
    return SFT_ROWS

  def batch_lengths(self, layout: FeatureLayout, feature_lengths: Mapping[str, int], pack: bool) -> dict[str, int]:
    if pack:
      raise UserError(f"train.objective={self.name} reads one prompt per row: set stream_settings.pack = False")
    return layout.model_lengths(feature_lengths, pack=False)


@gin.configurable
def token_f1(prompts: list[list[int]], completions: list[list[int]], answers: list[list[int]]) -> list[float]:
  """A Python reward example (`reward_fn = @token_f1`): the token-bag F1 of completion and answer (EOS included)."""
  out = []
  for c, a in zip(completions, answers, strict=True):
    common = sum(min(c.count(t), a.count(t)) for t in set(c))
    out.append(0.0 if not common else 2 * common / (len(c) + len(a)))
  return out
