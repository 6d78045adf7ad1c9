"""Evaluation runs: checkpoints x eval mixtures -> predictions -> per-task metrics -> report files.

`run_eval` serves both the end of `itjax train` and `itjax eval`; only process 0 writes the report.
Each task is scored with its own metrics (`itjax.eval.task_metrics`); each phase (reading a set, generating,
rank classification, scoring, the decontamination scan) says how far it got on the "itjax" logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping

import flax.linen as nn
import gin
import jax
import seqio

from itjax.core.mesh import create_mesh, logical_axis_rules
from itjax.core.model_dir import ModelDir
from itjax.data.quality import contamination
from itjax.data.registry import leaf_tasks, require_task
from itjax.data.truncation import run_default as run_truncation
from itjax.data.vocab import REGISTERED, run_vocabulary
from itjax.errors import UserError
from itjax.eval.generate import eval_examples
from itjax.eval.predict import duration, predict, say
from itjax.eval.rank import rank_classify
from itjax.eval.report import write_report
from itjax.eval.settings import EvalSettings
from itjax.eval.task_metrics import annotate, checkpoint_scores, row_outputs, score_rows
from itjax.models.families import interface_for

log = logging.getLogger("itjax")
TOP_OFFENDERS = 5  # training tasks named per eval set in report.md's decontamination notes


def _check_split(mixture: str, split: str) -> None:
  for task in leaf_tasks(mixture):
    if split not in task.splits:
      raise UserError(f"eval_settings: task {task.name!r} (in {mixture!r}) has no {split!r} split; "
                      f"it has {sorted(task.splits)}")


def _predict_and_score(iface, params_by_name, rows, vocab, settings, mesh, rules, label: str):
  """(outputs, RowScores) of every checkpoint on `rows`: generation, rank classification, each task's metrics."""
  specs = annotate(rows)
  outputs, per_checkpoint = {}, {}
  for ck, params in params_by_name.items():
    what = f"{label} [{ck}]" if len(params_by_name) > 1 else label
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(), nn.logical_axis_rules(rules):
      gens = predict(iface, params, rows, vocab, batch_size=settings.batch_size,
                     max_new_tokens=settings.max_new_tokens, progress=f"{what}: generation")
      ranked = rank_classify(iface, params, rows, vocab, batch_size=settings.batch_size,
                             progress=f"{what}: rank classification")
    start = time.monotonic()
    per_checkpoint[ck] = score_rows(rows, gens, ranked, specs)
    outputs[ck] = row_outputs(gens, ranked, per_checkpoint[ck])
    if time.monotonic() - start >= 10:
      say(f"{what}: per-row metrics of {len(rows):,} rows in {duration(time.monotonic() - start)}")
  return outputs, checkpoint_scores(per_checkpoint)


def evaluated_splits() -> tuple[str, ...]:
  """The eval splits `run_eval` reads under the current eval_settings: the reported one, then the selection one."""
  return EvalSettings().evaluated_splits


def contamination_counts(train_mixture: str, eval_mixtures: Mapping[str, str], max_per_task: int) -> dict:
  """Per eval set: training examples (the first `max_per_task` of each task) sharing a 13-gram with the
  evaluated splits of it, in all and per training task ("tasks": {task: {"contaminated", "examples"}}, tasks
  with none left out, most first). One pass over the training mixture serves every set."""
  res = contamination(train_mixture, {s: [m] for s, m in eval_mixtures.items()}, max_per_task=max_per_task,
                      eval_splits=evaluated_splits(), progress=say)
  out = {}
  for set_name, mixture in eval_mixtures.items():
    c = res["sets"][set_name]
    out[set_name] = {"eval": mixture, "eval_splits": res["eval_splits"], "train_examples_scanned": res["examples"],
                     "contaminated": c["contaminated"], "eval_ngrams": c["eval_ngrams"],
                     "max_examples_per_task": max_per_task,
                     "tasks": {t: {"contaminated": n, "examples": res["tasks"][t]} for t, n in c["tasks"].items()}}
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
    tasks = list(c.get("tasks", {}).items())
    if tasks:
      top = ", ".join(f"`{t}` {v['contaminated']}/{v['examples']} "
                      f"({100.0 * v['contaminated'] / max(v['examples'], 1):.0f}%)" for t, v in tasks[:TOP_OFFENDERS])
      more = f"; {len(tasks) - TOP_OFFENDERS} more tasks in report.json" if len(tasks) > TOP_OFFENDERS else ""
      lines.append(f"  - most contaminated training tasks: {top}{more}")
  return lines


def _read(set_name: str, mixture: str, split: str, lengths, settings: EvalSettings, vocab, which: str,
          truncation: str) -> list[dict]:
  """The eval rows of one set and split, saying what is read and how long it took."""
  start = time.monotonic()
  say(f"eval {set_name} ({which}): reading {len(leaf_tasks(mixture))} tasks of {mixture} ({split} split)")
  rows = eval_examples(mixture, lengths, settings.max_examples_per_task, split=split, vocabulary=vocab,
                       truncation=truncation)
  say(f"eval {set_name}: {len(rows):,} rows ({split}) read in {duration(time.monotonic() - start)}")
  return rows


def run_eval(model, params_by_name: Mapping[str, object], eval_mixtures: Mapping[str, str],
             task_feature_lengths: Mapping[str, int], out_dir: str, *, vocabulary: seqio.Vocabulary | None = None,
             mesh=None, rules=(), title: str = "evaluation", train_mixture: str | None = None) -> tuple[dict, str]:
  """Generates with, and rank-classifies by, every checkpoint on every eval mixture; writes the report.

  Tasks are read with `vocabulary` (the run's; default: as registered, UTF-8 bytes).
  With `selection_split` set (eval_settings), the dev split is evaluated too and picks each dataset's
  best template; with `train_mixture`, the report states its contamination counts against each set.
  """
  settings = EvalSettings()
  truncation = run_truncation()  # as the training stream reads the tasks
  vocab = vocabulary or REGISTERED
  split, selection_split = settings.split, settings.selection_split
  # Prompts as training read them (an encoder's inputs leave room for their EOS).
  iface = interface_for(model)
  lengths = iface.features.task_lengths(task_feature_lengths)
  sets, selections = {}, {}
  for k, (set_name, mixture) in enumerate(eval_mixtures.items()):
    for s in {split, selection_split} - {None}:
      _check_split(mixture, s)
    rows = _read(set_name, mixture, split, lengths, settings, vocab, f"{k + 1}/{len(eval_mixtures)}", truncation)
    sets[set_name] = (rows, *_predict_and_score(iface, params_by_name, rows, vocab, settings, mesh, rules,
                                                f"eval {set_name}"))
    if selection_split and selection_split != split:
      dev = _read(set_name, mixture, selection_split, lengths, settings, vocab, f"{k + 1}/{len(eval_mixtures)}",
                  truncation)
      _, dev_scores = _predict_and_score(iface, params_by_name, dev, vocab, settings, mesh, rules,
                                         f"eval {set_name} ({selection_split})")
      selections[set_name] = (f"best template chosen on the {selection_split} split, reported on the {split} split",
                              dev, dev_scores)
  extra = {"eval_mixtures": dict(eval_mixtures), "split": split, "selection_split": selection_split}
  notes: list[str] = []
  if train_mixture and settings.decontamination_examples_per_task and jax.process_index() == 0:
    say(f"decontamination: scanning {train_mixture} against {len(eval_mixtures)} eval sets")
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
