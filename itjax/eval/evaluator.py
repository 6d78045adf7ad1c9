"""Evaluation runs: checkpoints x eval mixtures -> predictions -> report files.

`run_eval` serves both the end of `itjax train` and `itjax eval`; only
process 0 writes the report.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping

import flax.linen as nn
import gin
import jax

from itjax.data.templates import CHAIN_OF_THOUGHT, extract_cot_answer
from itjax.data.vocab import default_vocabulary
from itjax.eval.generate import eval_examples, predict
from itjax.eval.rank import rank_classify
from itjax.eval.report import write_report

log = logging.getLogger("itjax")


@gin.configurable
def eval_settings(batch_size: int = 64, max_new_tokens: int = 32, max_examples_per_task: int | None = None) -> dict:
  """How much to evaluate and how: rows per decode batch, generation budget, per-task cap."""
  return {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "max_per_task": max_examples_per_task}


def score_rows(rows: list[dict], generations: list[str], ranked: list[dict | None]) -> dict[str, list]:
  """Per-row metric outcomes (1.0 / 0.0, None where a metric does not apply).

  Chain-of-thought rows are scored on the answer after "So the answer is".
  """
  em = [float(extract_cot_answer(g) == r["answer"].strip()) if r["variant"] == CHAIN_OF_THOUGHT
        else float(g.strip() == r["target"].strip()) for g, r in zip(generations, rows, strict=True)]
  acc = [None if k is None else float(k["option"] == r["target"].strip()) for k, r in zip(ranked, rows, strict=True)]
  norm = [None if k is None else float(k["option_norm"] == r["target"].strip())
          for k, r in zip(ranked, rows, strict=True)]
  return {"exact_match": em, "rank_accuracy": acc, "rank_accuracy_norm": norm}


def run_eval(model, params_by_name: Mapping[str, object], eval_mixtures: Mapping[str, str],
             task_feature_lengths: Mapping[str, int], out_dir: str, *, mesh=None, rules=(),
             title: str = "evaluation") -> tuple[dict, str]:
  """Generates with, and rank-classifies by, every checkpoint on every eval mixture; writes the report."""
  settings = eval_settings()
  vocab = default_vocabulary()
  sets = {}
  for set_name, mixture in eval_mixtures.items():
    rows = eval_examples(mixture, task_feature_lengths, settings["max_per_task"])
    outputs, scores = {}, {}
    for ck, params in params_by_name.items():
      with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(), nn.logical_axis_rules(rules):
        gens = predict(model, params, rows, vocab, batch_size=settings["batch_size"],
                       max_new_tokens=settings["max_new_tokens"])
        ranked = rank_classify(model, params, rows, vocab, batch_size=settings["batch_size"])
      outputs[ck] = [{"prediction": g, **(k or {})} for g, k in zip(gens, ranked, strict=True)]
      for metric, per_row in score_rows(rows, gens, ranked).items():
        scores.setdefault(metric, {})[ck] = per_row
    sets[set_name] = (rows, outputs, scores)
  extra = {"eval_mixtures": dict(eval_mixtures)}
  summary, md = write_report(out_dir, sets, title, extra) if jax.process_index() == 0 else ({}, "")
  if md:
    print(md.split("\n## ")[0])
    print(f"report: {out_dir}/report.md (per dataset and per template), report.json, predictions.jsonl")
  return summary, md


@gin.configurable
def evaluate(*, checkpoint_path: str = gin.REQUIRED, eval_mixtures: Mapping[str, str] = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED, output_dir: str | None = None,
             name: str = "eval", base_checkpoint_path: str | None = None) -> dict:
  """`itjax eval`: scores a checkpoint (and optionally a base one beside it) on eval mixtures."""
  from itjax.data.registry import require_task
  from itjax.models.config_io import find_model_dir
  from itjax.train import partitioning
  from itjax.train.checkpoints import load_model

  for mixture in eval_mixtures.values():
    require_task(mixture)
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  params_by_name = {}
  if base_checkpoint_path:
    _, params_by_name["base"] = load_model(base_checkpoint_path, mesh, rules)
  model, params_by_name["tuned" if base_checkpoint_path else "checkpoint"] = load_model(checkpoint_path, mesh, rules)
  out_dir = output_dir or os.path.join(find_model_dir(checkpoint_path), "eval", name)
  summary, _ = run_eval(model, params_by_name, eval_mixtures, task_feature_lengths, out_dir, mesh=mesh, rules=rules,
                        title=f"{checkpoint_path}: zero-shot evaluation")
  return summary
