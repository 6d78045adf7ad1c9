"""Held-out evaluation reports: report.json, report.md, predictions.jsonl, PNG plots, side_by_side.html.

Scores are grouped the way FLAN reports them: per template, per dataset (mean over templates, and the best
template), and per cluster (mean over its datasets), for each evaluated checkpoint side by side. A template's
score is computed on its rows: a mean of per-row outcomes, or, for a corpus metric (`Corpus`: BLEU, a task's own
seqio metric_fns, ...), the metric of the group's (target, prediction) pairs. Rows a metric does not apply to are
left out of it, and a dataset, cluster or set none of whose rows it applies to has no score for it (None in
report.json, "–" in report.md), not 0. Beside rank accuracy stand two baselines of the rows with answer options:
chance (mean 1 / number of options) and the majority class (share of the most common gold answer in the group).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from itjax.errors import make_dirs
from itjax.eval import figures


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
  """A metric scored on a whole group of rows at once (corpus BLEU, a seqio metric_fn).

  `items[i]`: row i's (target, prediction), or None where the metric does not apply; `fn(targets, predictions)`
  returns a percentage, or a dict of named scores (each reported as a metric of its own; one named like a score
  the same rows already have is reported as `seqio_<name>`), or None.
  """

  items: Sequence[tuple[Any, Any] | None]
  fn: Callable[[list, list], float | Mapping[str, float] | None]

  def score(self, idx: Sequence[int]) -> float | dict[str, float] | None:
    pairs = [self.items[i] for i in idx if self.items[i] is not None]
    if not pairs:
      return None
    return self.fn([t for t, _ in pairs], [p for _, p in pairs])


# metric -> checkpoint -> per-row score in [0, 1] (None where the metric does not apply), or a `Corpus`.
RowScores = Mapping[str, Mapping[str, "Sequence[float | None] | Corpus"]]
METRIC_TITLES = {
    "exact_match": "exact match of the greedy generation (chain of thought: of its final answer); every task",
    "accuracy": "the generation equals the target exactly (no whitespace stripping)",
    "squad_exact_match": "SQuAD v1.1 exact match (lowercased, punctuation and articles dropped)",
    "squad_f1": "SQuAD v1.1 token F1",
    "rouge1": "ROUGE-1 F-measure (rouge-score, stemmed), mean over rows",
    "rouge2": "ROUGE-2 F-measure (rouge-score, stemmed), mean over rows",
    "rougeLsum": "ROUGE-Lsum F-measure (rouge-score, stemmed, sentences split at ' . '), mean over rows",
    "bleu": "corpus BLEU (sacrebleu, intl tokenization) over each template's rows",
    "rank_accuracy": "rank classification: the option with the highest log-likelihood",
    "rank_accuracy_norm": "rank classification, log-likelihood per byte (lm-eval acc_norm)",
}
BASELINES = {
    "chance": "baseline: chance rate of rank classification (mean 1 / number of options)",
    "majority": "baseline: majority class (share of the most common gold answer among the template's rows)",
}
# Metrics shown first, in this order; other metrics (a task's own seqio metric_fns) follow as they come.
_ORDER = {m: i for i, m in enumerate(METRIC_TITLES)}


def _mean(values: Sequence[float | None]) -> float | None:
  vals = [v for v in values if v is not None]
  return 100.0 * sum(vals) / len(vals) if vals else None


def _avg(values: Sequence[float | None]) -> float | None:
  vals = [v for v in values if v is not None]
  return sum(vals) / len(vals) if vals else None


def _number(v) -> float | None:
  """A score as a float; None for no score (None, NaN or not a number)."""
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return None if math.isnan(v) else v


def _group_scores(idx: Sequence[int], scores: RowScores) -> dict[str, dict[str, float | None]]:
  """metric -> checkpoint -> the score of the rows `idx`; a corpus metric's dict adds each of its scores."""
  out: dict[str, dict[str, float | None]] = {}
  for name, cks in scores.items():
    for ck, values in cks.items():
      if not isinstance(values, Corpus):
        out.setdefault(name, {})[ck] = _mean([values[i] for i in idx])
        continue
      result = values.score(idx)
      if result is None:  # none of the rows has it
        continue
      for key, v in (result.items() if isinstance(result, Mapping) else [(name, result)]):
        if out.get(key, {}).get(ck) is not None:  # named like a score these rows already have: kept apart
          key = f"seqio_{key}"
        out.setdefault(key, {})[ck] = _number(v)
  return out


def _baselines(rows: Sequence[dict], idx: Sequence[int]) -> dict[str, float | None]:
  """Chance and majority-class rates (%) of the rows `idx` with answer options."""
  opts = [rows[i] for i in idx if rows[i].get("options")]
  if not opts:
    return dict.fromkeys(BASELINES)
  gold = Counter(str(r.get("target", "")).strip() for r in opts)
  return {"chance": 100.0 * sum(1 / len(r["options"]) for r in opts) / len(opts),
          "majority": 100.0 * max(gold.values()) / len(opts)}


def _template_scores(rows: Sequence[dict], scores: RowScores) -> dict[tuple, dict]:
  """(cluster, dataset, template) -> {"n", "scores": metric -> checkpoint -> score, "baselines"}."""
  by_template: dict[tuple, list[int]] = defaultdict(list)
  for i, r in enumerate(rows):
    by_template[(r["cluster"], r["dataset"], r["template_id"])].append(i)
  return {key: {"n": len(idx), "scores": _group_scores(idx, scores), "baselines": _baselines(rows, idx)}
          for key, idx in sorted(by_template.items())}


def _pick(candidates: Mapping[int, float | None]) -> int | None:
  """The template with the highest score (the lowest id among ties); None when no template has one."""
  scored = [(v, -t) for t, v in candidates.items() if v is not None]
  return -max(scored)[1] if scored else None


def metric_order(names) -> list[str]:
  """Known metrics first (in `METRIC_TITLES` order), then the others in the order they came."""
  names = list(dict.fromkeys(names))
  return sorted(names, key=lambda m: (_ORDER.get(m, len(_ORDER)), names.index(m)))


def _mean_of(entries: Sequence[dict], key: str, metrics: Sequence[str], cks: Sequence[str]) -> dict:
  return {m: {ck: _avg([e[key].get(m, {}).get(ck) for e in entries]) for ck in cks} for m in metrics}


def _mean_baselines(entries: Sequence[dict]) -> dict[str, float | None]:
  return {b: _avg([e["baselines"][b] for e in entries]) for b in BASELINES}


def summarize_set(rows: Sequence[dict], scores: RowScores,
                  selection: tuple[Sequence[dict], RowScores] | None = None) -> dict:
  """{"metrics", "overall", "overall_best_template", "overall_baselines", "clusters", "datasets", "templates"}.

  Every level holds scores[metric][checkpoint] for each metric of the set (None where none of its rows has the
  metric) and baselines[chance|majority]. A dataset is the mean over its templates; a cluster the mean over its
  datasets that have the metric, and "overall" over the clusters that have it. Per dataset, "best_template" is
  FLAN's best-template score: the template is chosen per metric and checkpoint on `selection` (rows and scores of
  the dev split) and its score on `rows` is reported; without `selection` it is chosen on `rows` themselves (an
  optimistic, oracle choice). "primary_metric" is the dataset's headline metric (its rows' `metrics[0]`).
  """
  per_template = _template_scores(rows, scores)
  chosen_on = _template_scores(*selection) if selection else per_template
  metrics = metric_order([m for v in per_template.values() for m in v["scores"]] or list(scores))
  cks = list(dict.fromkeys(ck for cs in scores.values() for ck in cs))
  templates = []
  for (c, d, t), v in per_template.items():
    templates.append({"cluster": c, "dataset": d, "template": t, "n": v["n"],
                      "scores": {m: {ck: v["scores"].get(m, {}).get(ck) for ck in cks} for m in metrics},
                      "baselines": v["baselines"]})
  primary = {r["dataset"]: (r.get("metrics") or ["exact_match"])[0] for r in rows}
  datasets = []
  for c, d in sorted({(t["cluster"], t["dataset"]) for t in templates}):
    ts = [t for t in templates if t["cluster"] == c and t["dataset"] == d]
    best, best_id = {}, {}
    for m in metrics:
      best[m], best_id[m] = {}, {}
      for ck in cks:
        pick = _pick({t["template"]: chosen_on.get((c, d, t["template"]), {}).get("scores", {}).get(m, {}).get(ck)
                      for t in ts})
        best_id[m][ck] = pick
        best[m][ck] = next((t["scores"][m][ck] for t in ts if t["template"] == pick), None)
    mean = _mean_of(ts, "scores", metrics, cks)
    datasets.append({"cluster": c, "dataset": d, "n": sum(t["n"] for t in ts), "templates": len(ts),
                     "primary_metric": primary.get(d, "exact_match"),
                     "metrics": [m for m in metrics if any(v is not None for v in mean[m].values())],
                     "scores": mean, "best_template": best, "best_template_id": best_id,
                     "baselines": _mean_baselines(ts)})
  clusters = []
  for c in sorted({d["cluster"] for d in datasets}):
    ds = [d for d in datasets if d["cluster"] == c]
    clusters.append({"cluster": c, "datasets": len(ds), "scores": _mean_of(ds, "scores", metrics, cks),
                     "best_template": _mean_of(ds, "best_template", metrics, cks), "baselines": _mean_baselines(ds)})
  return {"metrics": metrics, "overall": _mean_of(clusters, "scores", metrics, cks),
          "overall_best_template": _mean_of(clusters, "best_template", metrics, cks),
          "overall_baselines": _mean_baselines(clusters), "clusters": clusters, "datasets": datasets,
          "templates": templates}


def _fmt(v) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "–"
  return f"{v:.1f}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)


def _get(entry: Mapping, key: str, m: str, ck: str):
  return entry.get(key, {}).get(m, {}).get(ck)


def _cluster_tables(summary: Mapping[str, dict], cks: Sequence[str], key: str, overall: str) -> list[str]:
  """Per set: one row per cluster and the set's mean; the metrics the set has x checkpoints, then the baselines."""
  parts = []
  for s, v in summary.items():
    metrics = v.get("metrics") or [m for m in METRIC_TITLES if m in v["overall"]]
    # Only the metrics some cluster of the set has (a set without options has no rank accuracy columns).
    metrics = [m for m in metrics if any(_get(c, key, m, ck) is not None for c in v["clusters"] for ck in cks)]
    cols = [(m, ck) for m in metrics for ck in cks]
    has_options = any(x is not None for x in v.get("overall_baselines", {}).values())
    base = list(BASELINES) if has_options else []
    head = ["set", "cluster", "datasets"] + [f"{m} {ck}" for m, ck in cols] + [f"baseline: {b}" for b in base]
    body = [[s, c["cluster"], c["datasets"]] + [_get(c, key, m, ck) for m, ck in cols]
            + [c.get("baselines", {}).get(b) for b in base] for c in v["clusters"]]
    body.append([s, "**mean**", ""] + [v[overall].get(m, {}).get(ck) for m, ck in cols]
                + [v.get("overall_baselines", {}).get(b) for b in base])
    parts += [_table(head, body), ""]
  return parts


def markdown(summary: Mapping[str, dict], metrics: Sequence[str], checkpoints: Sequence[str], title: str,
             notes: Sequence[str] = ()) -> str:
  """report.md: per set the cluster table (mean over templates, then best template), then per dataset and per
  template one line per metric the dataset has (its primary metric marked *)."""
  cks = list(checkpoints)
  parts = [f"# {title}", "", "Zero-shot; scores in %, mean over templates unless noted; – where a metric does not "
           "apply to any of the rows (each task is scored with its own metrics; rank classification and its "
           "baselines need answer options).", ""]
  parts += [f"- {m}: {METRIC_TITLES.get(m, 'the task’s own metric')}" for m in metrics]
  parts += [f"- baseline: {b}: {t.removeprefix('baseline: ')}" for b, t in BASELINES.items()] + [""]
  parts += _cluster_tables(summary, cks, "scores", "overall")
  parts += list(notes)
  parts += ["", "## Best template per cluster (chosen per dataset as the set's `selection` line says)", ""]
  parts += [f"- {s}: {v.get('selection', 'best template chosen on the reported split itself (oracle)')}"
            for s, v in summary.items()] + [""]
  parts += _cluster_tables(summary, cks, "best_template", "overall_best_template")
  parts += ["## Per dataset (mean over templates; then the best template's score and id; * the primary metric)", ""]
  head = ["set", "cluster", "dataset", "n", "templates", "metric"] + [f"{h} {ck}" for ck in cks
                                                                      for h in ("mean", "best", "best id")]
  body = []
  for s, v in summary.items():
    for d in v["datasets"]:
      for m in d.get("metrics", metrics):
        star = "*" if m == d.get("primary_metric") else ""
        body.append([s, d["cluster"], d["dataset"], d["n"], d["templates"], f"{m}{star}"]
                    + [x for ck in cks for x in (_get(d, "scores", m, ck), _get(d, "best_template", m, ck),
                                                  _get(d, "best_template_id", m, ck))])
      for b in BASELINES:
        if d.get("baselines", {}).get(b) is not None:
          body.append([s, d["cluster"], d["dataset"], d["n"], d["templates"], f"baseline: {b}"]
                      + [x for _ in cks for x in (d["baselines"][b], None, None)])
  parts += [_table(head, body), "", "## Per template", ""]
  body = []
  for s, v in summary.items():
    has = {(d["cluster"], d["dataset"]): d.get("metrics", metrics) for d in v["datasets"]}
    for t in v["templates"]:
      body += [[s, t["dataset"], t["template"], t["n"], m] + [_get(t, "scores", m, ck) for ck in cks]
               for m in has.get((t["cluster"], t["dataset"]), metrics)]
      body += [[s, t["dataset"], t["template"], t["n"], f"baseline: {b}"] + [t["baselines"][b]] * len(cks)
               for b in BASELINES if t.get("baselines", {}).get(b) is not None]
  parts.append(_table(["set", "dataset", "template", "n", "metric"] + list(cks), body))
  return "\n".join(parts) + "\n"


def _file_name(metric: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)


def write_report(out_dir: str, sets: Mapping[str, tuple[list[dict], Mapping[str, list[dict]], RowScores]],
                 title: str, extra: Mapping | None = None,
                 selections: Mapping[str, tuple[str, Sequence[dict], RowScores]] | None = None,
                 notes: Sequence[str] = ()) -> tuple[dict, str]:
  """Writes report.json, report.md, predictions.jsonl and the figures; returns (summary, markdown).

  `sets[name] = (rows, outputs, scores)`: eval rows, per-checkpoint per-row outputs (prediction text, chosen
  option, per-row "scores", ...) and the metric scores (`RowScores`).
  `selections[name] = (description, rows, scores)`: the dev split that picks each dataset's best template.
  `notes`: Markdown lines shown under the main table (e.g. decontamination counts).
  report.json: {"title", "metrics" (every set's, known ones first), "metric_titles", "baselines",
  "checkpoints", **extra, "sets": {name: summarize_set(...) [+ "selection"]}}.
  """
  make_dirs(out_dir, "the report directory")
  summary = {}
  for name, (rows, _, scores) in sets.items():
    sel = (selections or {}).get(name)
    summary[name] = summarize_set(rows, scores, sel[1:] if sel else None)
    if sel:
      summary[name]["selection"] = sel[0]
  first = next(iter(sets.values()), None)
  checkpoints = list(first[1]) if first else []
  metrics = metric_order(m for s in summary.values() for m in s["metrics"])
  md = markdown(summary, metrics, checkpoints, title, notes)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump({"title": title, "metrics": metrics,
               "metric_titles": {m: METRIC_TITLES.get(m, "the task's own metric") for m in metrics},
               "baselines": BASELINES, "checkpoints": checkpoints, **(extra or {}), "sets": summary}, f, indent=1)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(md)
  with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
    for set_name, (rows, outputs, _) in sets.items():
      for i, r in enumerate(rows):
        rec = {k: v for k, v in r.items() if k != "input_ids"}
        f.write(json.dumps({"set": set_name, **rec, "outputs": {ck: o[i] for ck, o in outputs.items()}}) + "\n")
  for m in metrics:
    base = tuple(BASELINES) if m.startswith("rank_accuracy") else ()
    figures.cluster_bars(summary, m, checkpoints, os.path.join(out_dir, f"clusters_{_file_name(m)}.png"),
                         baselines=base)
    figures.over_steps(summary, m, checkpoints, os.path.join(out_dir, f"over_steps_{_file_name(m)}.png"))
  figures.side_by_side_html(sets, title, os.path.join(out_dir, "side_by_side.html"))
  return summary, md
