"""Which metrics each eval task is scored with, and its rows' scores under them.

A task's metrics come from, in order: its `TaskInfo.metrics` (names in `itjax.eval.metrics.METRICS`) and its own
seqio `metric_fns` (computed on the task's postprocessed texts, per template group, as seqio's evaluator would);
when it has neither, from its cluster (`CLUSTER_METRICS`: ROUGE for summarization, SQuAD EM/F1 for reading
comprehension and QA, BLEU for translation, ...), and exact match for any other cluster. A task with answer
options is a classification task: without metrics of its own it is scored by exact match and rank accuracy
whatever its cluster (FLAN lists AG News under summarization). Exact match is computed for every task (it is
comparable across tasks), rank accuracy for every task with options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio

from itjax.data.tasks import task_info
from itjax.data.templates import CHAIN_OF_THOUGHT, extract_cot_answer
from itjax.errors import UserError
from itjax.eval import metrics as M
from itjax.eval.report import Corpus, RowScores

EXACT_MATCH = "exact_match"
RANK = ("rank_accuracy", "rank_accuracy_norm")
SQUAD = ("squad_f1", "squad_exact_match")
# Default metrics of a cluster: FLAN's clusters (tasks/flan), the procedural ones (tasks/procedural.py) and the
# names users give their own tasks. A cluster not listed gets exact match only.
CLUSTER_METRICS: dict[str, tuple[str, ...]] = {
    "summarization": ("rouge",),
    "struct_to_text": ("rouge", "bleu"),
    "translation": ("bleu",),
    "reading_comp": SQUAD,
    "rc_commonsense": SQUAD,  # ReCoRD's entity answers
    "extractive_qa": SQUAD,
    "closed_book_qa": ("squad_exact_match", "squad_f1"),  # TriviaQA / Natural Questions report EM first
    "qa": ("squad_exact_match", "squad_f1"),
    **{c: (EXACT_MATCH,) for c in ("nli", "paraphrase", "commonsense", "coreference", "sentiment", "topic",
                                   "classification", "misc", "arithmetic", "string", "list_ops")},
}
# The headline score of a metric with several (for the report's primary metric and the side-by-side colours).
PRIMARY_SCORE = {"rouge": "rougeLsum"}


@dataclasses.dataclass(frozen=True)
class TaskMetrics:
  """How one task is scored: `names` (`itjax.eval.metrics` names, exact match among them), its seqio predict
  `metric_fns` with its `postprocess` (seqio's `Task.postprocess_fn`), whether it has answer options (rank
  accuracy) and where the names came from ("task_info", "seqio", "cluster", "default")."""

  task: str
  names: tuple[str, ...]
  seqio_fns: tuple[Callable, ...] = ()
  postprocess: Callable[..., Any] | None = None
  has_options: bool = False
  source: str = "default"

  @property
  def primary(self) -> str:
    """The score a report leads with: the first named metric (task_info), rank accuracy for a task with options,
    else the first default metric (exact match for a task scored only by its seqio metric_fns)."""
    if self.source == "task_info":
      first = self.names[0]
    elif self.has_options:
      return RANK[0]
    else:
      first = next((n for n in self.names if n != EXACT_MATCH), EXACT_MATCH)
    return PRIMARY_SCORE.get(first, M.score_names(first)[0])

  @property
  def scores(self) -> tuple[str, ...]:
    """The score names the named metrics and rank classification give this task, primary first."""
    keys = [k for n in self.names for k in M.score_names(n)] + (list(RANK) if self.has_options else [])
    return tuple(dict.fromkeys([self.primary, *keys]))


def default_metrics(cluster: str, has_options: bool) -> tuple[str, ...]:
  """The metrics of a task without its own: exact match (and rank accuracy) with options, else its cluster's."""
  return (EXACT_MATCH,) if has_options else CLUSTER_METRICS.get(cluster, (EXACT_MATCH,))


def task_metrics(name: str, cluster: str, has_options: bool) -> TaskMetrics:
  """The metrics of task `name` (a registered task; otherwise scored by its cluster's defaults)."""
  task = seqio.TaskRegistry.get(name) if name in seqio.TaskRegistry.names() else None
  info = task_info(task) if task is not None else None
  has_options = info.has_options if info else has_options
  fns = tuple(task.predict_metric_fns) if task is not None else ()
  post = task.postprocess_fn if task is not None else None
  named = tuple(info.metrics) if info and info.metrics else ()
  for n in named:
    try:
      M.score_names(n)
    except UserError as e:
      raise UserError(f"task {name!r}: TaskInfo.metrics: {e}") from None
  if named:
    source = "task_info"
  elif fns:
    source = "seqio"
  else:
    named = default_metrics(cluster, has_options)
    source = "cluster" if cluster in CLUSTER_METRICS else "default"
  names = named if EXACT_MATCH in named else (*named, EXACT_MATCH)
  return TaskMetrics(name, names, fns, post, has_options, source)


def annotate(rows: Sequence[dict]) -> dict[str, TaskMetrics]:
  """Each task's `TaskMetrics`; every row gets `metrics`: its task's score names, primary first."""
  specs: dict[str, TaskMetrics] = {}
  for r in rows:
    if r["task"] not in specs:
      specs[r["task"]] = task_metrics(r["task"], r["cluster"], bool(r.get("options")))
    r["metrics"] = list(specs[r["task"]].scores)
  return specs


def _scored_pair(row: dict, generation: str) -> tuple[str, str]:
  """(target, prediction) as the named metrics see them: chain of thought on the answer after "So the answer is"."""
  if row["variant"] == CHAIN_OF_THOUGHT:
    return row["answer"], extract_cot_answer(generation)
  return row["target"], generation


def _example(row: dict) -> dict:
  """The row as a seqio example for a postprocess_fn: its fields and the pretokenized texts."""
  return {**{k: v for k, v in row.items() if k != "input_ids"},
          "inputs_pretokenized": row.get("inputs_untruncated", row["inputs"]), "targets_pretokenized": row["target"]}


def _value(v) -> float | None:
  """A seqio metric value as a number (a `seqio.metrics.Scalar`'s value); None for text, histograms and such."""
  v = getattr(v, "value", v)
  try:
    return float(v)
  except (TypeError, ValueError):
    return None


def _seqio_metric(fn: Callable, tasks: Sequence[str]) -> Callable[[list, list], Any]:
  """`fn(targets=..., predictions=...)` on a group, its values as numbers; a failure names the tasks."""
  label = getattr(fn, "__name__", repr(fn))

  def run(targets: list, predictions: list):
    try:
      result = fn(targets=targets, predictions=predictions)
    except Exception as e:  # a task's own metric on its predictions: say whose it is
      raise UserError(f"metric_fn {label} of task {', '.join(tasks)} failed on {len(targets)} predictions: "
                      f"{type(e).__name__}: {e}") from e
    if isinstance(result, Mapping):
      return {str(k): _value(v) for k, v in result.items()}
    return _value(result)

  return run


def score_rows(rows: Sequence[dict], generations: Sequence[str], ranked: Sequence[dict | None],
               specs: Mapping[str, TaskMetrics] | None = None) -> dict[str, list | Corpus]:
  """One checkpoint's scores of `rows` (`RowScores` without the checkpoint level).

  Per-row metrics (exact match, SQuAD EM/F1, ROUGE, rank accuracy) are lists in [0, 1] with None where a row's
  task does not have the metric; corpus metrics (BLEU, seqio metric_fns) are `Corpus` items scored per group.
  Exact match and rank accuracy are always there (None where they do not apply). `specs` default: `annotate(rows)`.
  """
  specs = specs if specs is not None else annotate(rows)
  n = len(rows)
  if len(generations) != n or len(ranked) != n:
    raise ValueError(f"{n} rows but {len(generations)} generations and {len(ranked)} rank results")
  pairs = [_scored_pair(r, g) for r, g in zip(rows, generations, strict=True)]
  out: dict[str, list | Corpus] = {}
  by_metric: dict[str, list[int]] = {EXACT_MATCH: []}
  for i, r in enumerate(rows):
    for name in specs[r["task"]].names:
      by_metric.setdefault(name, []).append(i)
  for name, idx in by_metric.items():
    if name in M.PER_EXAMPLE:
      per_example = M.PER_EXAMPLE[name]([pairs[i][0] for i in idx], [pairs[i][1] for i in idx]) if idx else []
      for key in M.score_names(name):
        values: list[float | None] = [None] * n
        for i, s in zip(idx, per_example, strict=True):
          values[i] = s[key] / 100.0
        out[key] = values
    else:
      items: list[tuple | None] = [None] * n
      for i in idx:
        items[i] = pairs[i]
      out[name] = Corpus(items, lambda t, p, name=name: M.compute([name], t, p))
  for key, field in zip(RANK, ("option", "option_norm"), strict=True):
    out[key] = [None if k is None else float(k[field] == r["target"].strip()) for k, r in zip(ranked, rows,
                                                                                            strict=True)]
  # The tasks' own seqio metric_fns: one Corpus per function, on postprocessed texts.
  fn_tasks: dict[int, tuple[Callable, list[str]]] = {}
  for spec in specs.values():
    for fn in spec.seqio_fns:
      fn_tasks.setdefault(id(fn), (fn, []))[1].append(spec.task)
  for fn, tasks in fn_tasks.values():
    items = [None] * n
    for i, (r, g) in enumerate(zip(rows, generations, strict=True)):
      spec = specs[r["task"]]
      if r["task"] in tasks:
        post = spec.postprocess or (lambda x, **_: x)
        ex = _example(r)
        items[i] = (post(r["target"], example=ex, is_target=True), post(g, example=ex, is_target=False))
    name = f"seqio_{getattr(fn, '__name__', 'metric')}"
    out[name if name not in out else f"{name}_{len(out)}"] = Corpus(items, _seqio_metric(fn, tasks))
  return out


def row_outputs(generations: Sequence[str], ranked: Sequence[dict | None],
                scores: Mapping[str, list | Corpus]) -> list[dict]:
  """Per row: the prediction, the rank classification result and the row's per-row scores (%, for
  predictions.jsonl and side_by_side.html); a row scored by BLEU also gets its `sentence_bleu` (display only)."""
  out = []
  for i, (g, k) in enumerate(zip(generations, ranked, strict=True)):
    row_scores = {m: round(100.0 * v[i], 2) for m, v in scores.items()
                  if not isinstance(v, Corpus) and v[i] is not None}
    bleu = scores.get("bleu")
    if isinstance(bleu, Corpus) and bleu.items[i] is not None:
      row_scores["sentence_bleu"] = round(M.sentence_bleu(*bleu.items[i]), 2)
    out.append({"prediction": g, **(k or {}), "scores": row_scores})
  return out


def checkpoint_scores(per_checkpoint: Mapping[str, Mapping[str, list | Corpus]]) -> RowScores:
  """{checkpoint: score_rows(...)} as `RowScores` (metric -> checkpoint -> scores)."""
  out: dict[str, dict[str, list | Corpus]] = {}
  for ck, scores in per_checkpoint.items():
    for metric, values in scores.items():
      out.setdefault(metric, {})[ck] = values
  return out
