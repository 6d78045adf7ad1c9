"""`itjax rlhf-report`: what preference tuning or RL did to a policy, on held-out prompts.

For a tuned policy against its SFT start, on one split of a task's prompts (greedy completions of both):
the win rate of the tuned policy by exact match against the task's answers and, with a reward model, by its
score (a win counts 1, a tie 1/2); the reward model's held-out pair accuracy from its run's metrics; and, from
the tuned run's metrics.jsonl, the mean reward and KL per step (plotted to `rl_curves.png`). Writes
`rlhf_report.json` to `--output` and prints a table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from itjax.core.mesh import create_mesh, logical_axis_rules
from itjax.core.model_dir import ModelDir
from itjax.data.pipeline import validation_rows
from itjax.data.vocab import load_vocabulary
from itjax.errors import UserError
from itjax.eval import figures
from itjax.train.objectives.reward import last_positions
from itjax.train.objectives.rollouts import completion_mask, exact_match
from itjax.train.summaries import read_metrics


def _prompts_and_answers(task: str, lengths: Mapping[str, int], split: str, vocab: Any, layout: Any
                         ) -> tuple[list[list[int]], list[list[int]]]:
  prompts, answers = [], []
  for b in validation_rows(task, lengths, 64, split=split, layout=layout, vocabulary=vocab).as_numpy_iterator():
    for t, w in zip(b["decoder_target_tokens"], b["decoder_loss_weights"], strict=True):
      first = int(np.argmax(w > 0))
      prompts.append([int(x) for x in t[:first]])
      answers.append([int(x) for x in t[w > 0]])
  return prompts, answers


def _reward_scores(rm: Any, prompts: list[list[int]], completions: np.ndarray, eos: int) -> np.ndarray:
  """The reward model's score of each prompt + completion (at the position that predicts its last token)."""
  iface, params = rm
  keep = np.asarray(completion_mask(jnp.asarray(completions), eos)) > 0
  seqs = [p + [int(x) for x in c[k]] for p, c, k in zip(prompts, completions, keep, strict=True)]
  width = max(len(s) for s in seqs)
  tokens, ids = np.zeros((len(seqs), width), np.int32), np.zeros((len(seqs), width), np.int32)
  for i, seq in enumerate(seqs):
    tokens[i, :len(seq)] = [0] + seq[:-1]  # the rows' shifted inputs, as the reward model was trained
    ids[i, :len(seq)] = 1
  positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)

  @jax.jit
  def score(params, tokens, ids, positions):
    batch = {"decoder_input_tokens": tokens, "decoder_segment_ids": ids, "decoder_positions": positions}
    return (iface.logits(params, batch)[..., 0] * last_positions(ids)).sum(axis=1)

  return np.asarray(score(params, tokens, ids, positions))


def _win_rate(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean((a > b) + 0.5 * (a == b)))


def _curves(policy_dir: str, path: str) -> dict[str, list]:
  metrics = read_metrics(policy_dir)
  steps = sorted(s for s, m in metrics.items() if "reward" in m)
  curves = {"step": steps, "reward": [metrics[s]["reward"] for s in steps],
            "kl": [metrics[s].get("kl") for s in steps]}
  if steps:
    figures.line_plot({"reward": curves["reward"], "KL": curves["kl"]}, steps, path, "mean reward and KL per step")
  return curves


def rlhf_report(*, sft: str, policy: str, task: str, lengths: Mapping[str, int], output: str,
                reward_model: str | None = None, split: str = "validation", max_new_tokens: int = 16) -> dict:
  """The report (see the module docstring) as a dict; also written to `output`/rlhf_report.json."""
  mesh, rules = create_mesh(), logical_axis_rules()
  loaded = {name: ModelDir.open(path).load(mesh, rules) for name, path in (("sft", sft), ("policy", policy))}
  policy_dir = ModelDir.open(policy)
  vocab = load_vocabulary(policy_dir.tokenizer_file)
  prompts, answers = _prompts_and_answers(task, lengths, split, vocab, loaded["policy"].interface.features)
  if not prompts:
    raise UserError(f"task {task!r} split {split!r}: no prompts")
  eos = vocab.eos_id
  if reward_model is not None:
    rm_dir = ModelDir.open(reward_model)
    rm = rm_dir.load(mesh, rules)
    if not getattr(rm.interface.model.cfg, "score_head", False):
      raise UserError(f"--reward_model {reward_model}: not a reward model (no score_head)")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    outs = {name: np.asarray(m.interface.generate(m.params, prompts, max_new_tokens=max_new_tokens, eos_id=eos))
            for name, m in loaded.items()}
    ans = np.zeros((len(answers), max(len(a) for a in answers)), np.int32)
    for i, a in enumerate(answers):
      ans[i, :len(a)] = a
    exact = {name: np.asarray(exact_match(jnp.asarray(out), jnp.asarray(ans), eos)) for name, out in outs.items()}
    report = {"task": task, "split": split, "prompts": len(prompts),
              "exact_match": {k: float(v.mean()) for k, v in exact.items()},
              "win_rate_exact_match": _win_rate(exact["policy"], exact["sft"])}
    if reward_model is not None:
      scores = {k: _reward_scores((rm.interface, rm.params), prompts, o, eos) for k, o in outs.items()}
      report["reward_model_score"] = {k: float(v.mean()) for k, v in scores.items()}
      report["win_rate_reward_model"] = _win_rate(scores["policy"], scores["sft"])
      rm_metrics = read_metrics(rm_dir.root)
      acc = [m["eval/validation/accuracy"] for _, m in sorted(rm_metrics.items()) if "eval/validation/accuracy" in m]
      if acc:
        report["reward_model_accuracy"] = {"start": acc[0], "end": acc[-1]}
  os.makedirs(output, exist_ok=True)
  report["curves"] = _curves(policy_dir.root, os.path.join(output, "rl_curves.png"))
  with open(os.path.join(output, "rlhf_report.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def report_text(report: Mapping[str, Any]) -> str:
  lines = [f"held-out prompts: {report['prompts']} ({report['task']}, {report['split']})",
           f"exact match: SFT {report['exact_match']['sft']:.3f}, tuned {report['exact_match']['policy']:.3f}; "
           f"win rate of tuned over SFT by exact match {report['win_rate_exact_match']:.3f}"]
  if "win_rate_reward_model" in report:
    s = report["reward_model_score"]
    lines.append(f"reward model score: SFT {s['sft']:.3f}, tuned {s['policy']:.3f}; win rate by the reward model "
                 f"{report['win_rate_reward_model']:.3f}")
  if "reward_model_accuracy" in report:
    a = report["reward_model_accuracy"]
    lines.append(f"reward model held-out pair accuracy: {a['start']:.3f} at start, {a['end']:.3f} at end")
  c = report["curves"]
  if c["step"]:
    lines.append("step  mean reward  KL")
    every = max(1, len(c["step"]) // 10)
    lines += [f"{s:>4}  {r:11.3f}  {k if k is None else round(k, 4)}"
              for s, r, k in list(zip(c["step"], c["reward"], c["kl"], strict=True))[::every]]
  return "\n".join(lines)
