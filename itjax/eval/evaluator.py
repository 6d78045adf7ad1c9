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
import seqio

from itjax.core.mesh import create_mesh, logical_axis_rules
from itjax.core.model_dir import ModelDir
from itjax.data.quality import scan
from itjax.data.registry import leaf_tasks, require_task
from itjax.data.templates import CHAIN_OF_THOUGHT, extract_cot_answer
from itjax.data.vocab import REGISTERED, run_vocabulary
from itjax.errors import UserError
from itjax.eval.generate import eval_examples
from itjax.eval.predict import predict
from itjax.eval.rank import rank_classify
from itjax.eval.report import write_report
from itjax.eval.settings import EvalSettings
from itjax.models.families import interface_for

log = logging.getLogger("itjax")


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


def _check_split(mixture: str, split: str) -> None:
  for task in leaf_tasks(mixture):
    if split not in task.splits:
      raise UserError(f"eval_settings: task {task.name!r} (in {mixture!r}) has no {split!r} split; "
                      f"it has {sorted(task.splits)}")


def _predict_and_score(iface, params_by_name, rows, vocab, settings, mesh, rules):
  outputs, scores = {}, {}
  for ck, params in params_by_name.items():
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(), nn.logical_axis_rules(rules):
      gens = predict(iface, params, rows, vocab, batch_size=settings.batch_size,
                     max_new_tokens=settings.max_new_tokens)
      ranked = rank_classify(iface, params, rows, vocab, batch_size=settings.batch_size)
    outputs[ck] = [{"prediction": g, **(k or {})} for g, k in zip(gens, ranked, strict=True)]
    for metric, per_row in score_rows(rows, gens, ranked).items():
      scores.setdefault(metric, {})[ck] = per_row
  return outputs, scores


def evaluated_splits() -> tuple[str, ...]:
  """The eval splits `run_eval` reads under the current eval_settings: the reported one, then the selection one."""
  return EvalSettings().evaluated_splits


def contamination_counts(train_mixture: str, eval_mixtures: Mapping[str, str], max_per_task: int) -> dict:
  """Per eval set: training examples (the first `max_per_task` of each task) sharing a 13-gram with the
  evaluated splits of it."""
  out = {}
  for set_name, mixture in eval_mixtures.items():
    res = scan(train_mixture, [mixture], max_per_task=max_per_task, eval_splits=evaluated_splits())
    out[set_name] = {"eval": mixture, "eval_splits": res["eval_splits"],
                     "train_examples_scanned": res["totals"]["examples"],
                     "contaminated": res["totals"]["contaminated"], "eval_ngrams": res["eval_ngrams"],
                     "max_examples_per_task": max_per_task}
  return out


def _contamination_notes(train_mixture: str, counts: Mapping[str, dict]) -> list[str]:
  lines = ["", f"Decontamination (13-gram overlap, as GPT-3 / lm-eval) of the training mixture `{train_mixture}` "
               "against each eval set:", ""]
  for set_name, c in counts.items():
    pct = 100.0 * c["contaminated"] / max(c["train_examples_scanned"], 1)
    lines.append(f"- {set_name} (`{c['eval']}`, {'/'.join(c['eval_splits'])}): {c['contaminated']} of "
                 f"{c['train_examples_scanned']} training "
                 f"examples scanned ({pct:.1f}%; the first {c['max_examples_per_task']} of each task) share a "
                 f"13-gram with it")
  return lines


def run_eval(model, params_by_name: Mapping[str, object], eval_mixtures: Mapping[str, str],
             task_feature_lengths: Mapping[str, int], out_dir: str, *, vocabulary: seqio.Vocabulary | None = None,
             mesh=None, rules=(), title: str = "evaluation", train_mixture: str | None = None) -> tuple[dict, str]:
  """Generates with, and rank-classifies by, every checkpoint on every eval mixture; writes the report.

  Tasks are read with `vocabulary` (the run's; default: as registered, UTF-8 bytes).
  With `selection_split` set (eval_settings), the dev split is evaluated too and picks each dataset's
  best template; with `train_mixture`, the report states its contamination counts against each set.
  """
  settings = EvalSettings()
  vocab = vocabulary or REGISTERED
  split, selection_split = settings.split, settings.selection_split
  # Prompts as training read them (an encoder's inputs leave room for their EOS).
  iface = interface_for(model)
  lengths = iface.features.task_lengths(task_feature_lengths)
  sets, selections = {}, {}
  for set_name, mixture in eval_mixtures.items():
    for s in {split, selection_split} - {None}:
      _check_split(mixture, s)
    rows = eval_examples(mixture, lengths, settings.max_examples_per_task, split=split, vocabulary=vocab)
    sets[set_name] = (rows, *_predict_and_score(iface, params_by_name, rows, vocab, settings, mesh, rules))
    if selection_split and selection_split != split:
      dev = eval_examples(mixture, lengths, settings.max_examples_per_task, split=selection_split,
                          vocabulary=vocab)
      _, dev_scores = _predict_and_score(iface, params_by_name, dev, vocab, settings, mesh, rules)
      selections[set_name] = (f"best template chosen on the {selection_split} split, reported on the {split} split",
                              dev, dev_scores)
  extra = {"eval_mixtures": dict(eval_mixtures), "split": split, "selection_split": selection_split}
  notes: list[str] = []
  if train_mixture and settings.decontamination_examples_per_task and jax.process_index() == 0:
    extra["train_mixture"] = train_mixture
    extra["decontamination"] = contamination_counts(train_mixture, eval_mixtures,
                                                    settings.decontamination_examples_per_task)
    notes = _contamination_notes(train_mixture, extra["decontamination"])
  summary, md = (write_report(out_dir, sets, title, extra, selections, notes) if jax.process_index() == 0
                 else ({}, ""))
  if md:
    print(md.split("\n## ")[0])
    print(f"report: {out_dir}/report.md (per dataset and per template), report.json, predictions.jsonl")
  return summary, md


@gin.configurable
def evaluate(*, checkpoint_path: str = gin.REQUIRED, eval_mixtures: Mapping[str, str] = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED, output_dir: str | None = None,
             name: str = "eval", base_checkpoint_path: str | None = None,
             train_mixture: str | None = None) -> dict:
  """`itjax eval`: scores a checkpoint (and optionally a base one beside it) on eval mixtures.

  train_mixture: the mixture the checkpoint was tuned on; the report then states its decontamination
  counts against each eval set.
  """
  for mixture in [*eval_mixtures.values(), *([train_mixture] if train_mixture else [])]:
    require_task(mixture)
  mdir = ModelDir.open(checkpoint_path)
  vocabulary = run_vocabulary(mdir.tokenizer_file)
  mesh, rules = create_mesh(), logical_axis_rules()
  params_by_name = {}
  if base_checkpoint_path:
    params_by_name["base"] = ModelDir.open(base_checkpoint_path).load(mesh, rules).params
  loaded = mdir.load(mesh, rules)
  params_by_name["tuned" if base_checkpoint_path else "checkpoint"] = loaded.params
  out_dir = output_dir or os.path.join(mdir.root, "eval", name)
  summary, _ = run_eval(loaded.interface, params_by_name, eval_mixtures, task_feature_lengths, out_dir,
                        vocabulary=vocabulary, mesh=mesh, rules=rules,
                        title=f"{checkpoint_path}: zero-shot evaluation", train_mixture=train_mixture)
  return summary
