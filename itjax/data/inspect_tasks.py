"""Text for `itjax tasks list`, `itjax tasks show` and `itjax tasks quality`."""

from __future__ import annotations

import json

import seqio

from itjax.data import quality
from itjax.data.preference import PreferenceTask, prompt_text
from itjax.data.registry import EVAL_SPLITS, leaf_tasks, require_task
from itjax.data.tasks import task_info
from itjax.errors import UserError


def list_text(pattern: str = "") -> str:
  tasks = sorted(n for n in seqio.TaskRegistry.names() if pattern in n)
  mixtures = sorted(n for n in seqio.MixtureRegistry.names() if pattern in n)
  lines = [f"{len(tasks)} tasks:"]
  for n in tasks:
    info = task_info(n)
    meta = f"cluster={info.cluster:<14} variant={info.variant:<9} templates={info.num_templates}" if info else ""
    lines.append(f"  {n:<40} {meta}")
  lines.append(f"{len(mixtures)} mixtures:")
  for n in mixtures:
    lines.append(f"  {n:<40} {len(seqio.MixtureRegistry.get(n).tasks)} tasks")
  return "\n".join(lines)


def show_text(name: str, n: int = 3, split: str = "validation") -> str:
  obj = require_task(name)
  if isinstance(obj, seqio.Mixture):
    total = obj.total_rate
    lines = [f"mixture {name}: {len(obj.tasks)} tasks, effective sampling rates:"]
    for t in sorted(obj.tasks, key=lambda t: -obj.get_rate(t)):
      lines.append(f"  {t.name:<40} {obj.get_rate(t) / total:6.2%}")
    return "\n".join(lines)
  info = task_info(obj)
  lines = [f"task {name}"]
  if info:
    lines.append(f"  dataset={info.dataset} clusters={','.join(info.clusters)} variant={info.variant} "
                 f"templates={info.num_templates} options={info.has_options}")
  lines.append(f"  splits: {', '.join(obj.splits)}")
  if isinstance(obj, PreferenceTask):  # its pairs, as a preference objective reads them
    rows = obj.preference.rows(split)
    lines.append(f"  preference rows: {len(rows)} in {split}, {sum(len(r.pairs()) for r in rows)} pairs")
    for i, r in enumerate(rows[:n]):
      lines += [f"--- row {i} ---", prompt_text(r.prompt, obj.template).rstrip("\n")]
      lines += [f"  rank {rank}: {text}" for rank, text in sorted(zip(r.ranks, r.responses, strict=True))]
    return "\n".join(lines)
  ds = obj.get_dataset(None, split=split, shuffle=False, use_cached=False).take(n)
  for i, ex in enumerate(ds.as_numpy_iterator()):
    tid = ex.get("template_id", "")
    lines += [f"--- example {i} (template {tid}) ---", ex["inputs_pretokenized"].decode().rstrip("\n"),
              f"=> {ex['targets_pretokenized'].decode()}"]
  return "\n".join(lines)


def splits_read(eval_names: list[str], splits: tuple[str, ...]) -> dict[str, list[str]]:
  """For each eval task under `eval_names`, which of `splits` it has (what a contamination scan reads of it)."""
  return {t.name: [s for s in splits if s in t.splits] for n in eval_names for t in leaf_tasks(n)}


def _splits_line(by_task: dict[str, list[str]], splits: tuple[str, ...]) -> str:
  """"eval splits read: test, validation" and the tasks that lack some of them."""
  line = f"eval splits read: {', '.join(splits)}"
  partial = {t: s for t, s in by_task.items() if len(s) < len(splits)}
  if partial:
    line += " (" + "; ".join(f"{t}: {', '.join(s) if s else 'none of them, not checked'}"
                             for t, s in sorted(partial.items())) + ")"
  return line


def quality_text(name: str, against: list[str], max_examples: int | None = None, output: str | None = None,
                 feature_lengths: dict | None = None, splits: list[str] | None = None) -> str:
  """Duplicate, contamination and truncation counts of a training mixture (see itjax.data.quality), against
  `splits` of the eval tasks (default `EVAL_SPLITS`: the splits the eval protocol reports and selects on)."""
  for n in [name, *against]:
    require_task(n)
  eval_splits = tuple(dict.fromkeys(splits or EVAL_SPLITS))
  by_task = splits_read(against, eval_splits)
  have = {s for t in by_task.values() for s in t}
  missing = [s for s in eval_splits if s not in have] if splits else ([] if have else list(eval_splits))
  if missing:
    known = sorted({s for n in against for t in leaf_tasks(n) for s in t.splits})
    raise UserError(f"no eval task of {', '.join(against)} has split {', '.join(map(repr, missing))}; they have "
                    f"{', '.join(known) or 'none'} (--split)")
  report = quality.scan(name, against, max_per_task=max_examples, feature_lengths=feature_lengths,
                        eval_splits=eval_splits)
  report["eval_splits_by_task"] = by_task
  if output:
    with open(output, "w") as f:
      json.dump(report, f, indent=1)
  t = report["totals"]
  lines = [f"training {name} vs eval {', '.join(against)} "
           f"({report['ngram']}-grams, {report['eval_ngrams']:,} eval grams)",
           _splits_line(by_task, eval_splits),
           f"{'task':<40} {'examples':>9} {'exact dup':>9} {'norm dup':>9} {'contam.':>9} {'truncated':>9} "
           f"{'skipped':>9}"]
  for task, c in [*report["tasks"].items(), ("total", t)]:
    trunc = "-" if c["truncated"] is None else f"{c['truncated']:,}"
    lines.append(f"{task:<40} {c['examples']:>9,} {c['exact_duplicates']:>9,} {c['normalized_duplicates']:>9,} "
                 f"{c['contaminated']:>9,} {trunc:>9} {c['skipped']:>9,}")
  lines.append("skipped: source rows a dataset's documented filter dropped (unlabeled rows, empty answers)")
  return "\n".join(lines)
