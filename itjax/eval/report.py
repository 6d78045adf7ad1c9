"""Held-out evaluation reports: report.json, report.md, predictions.jsonl, PNG plots, side_by_side.html.

Scores are grouped the way FLAN reports them: per template, per dataset (mean
over templates, and the best template), and per cluster (mean over its
datasets), for each evaluated checkpoint side by side. Every metric is a mean
of per-row outcomes; rows a metric does not apply to (rank classification
on a task without options) are left out of that metric.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

from itjax.eval import figures

# metric -> checkpoint -> per-row score in [0, 1], or None where the metric does not apply.
RowScores = Mapping[str, Mapping[str, Sequence[float | None]]]
METRIC_TITLES = {
    "exact_match": "exact match of the greedy generation",
    "rank_accuracy": "rank classification: the option with the highest log-likelihood",
    "rank_accuracy_norm": "rank classification, log-likelihood per byte (lm-eval acc_norm)",
}


def _mean(values: Sequence[float | None]) -> float | None:
  vals = [v for v in values if v is not None]
  return 100.0 * sum(vals) / len(vals) if vals else None


def _avg(values: Sequence[float | None]) -> float | None:
  vals = [v for v in values if v is not None]
  return sum(vals) / len(vals) if vals else None


def _best(values: Sequence[float | None]) -> float | None:
  return max((v for v in values if v is not None), default=None)


def _template_scores(rows: Sequence[dict], scores: RowScores) -> dict[tuple, dict]:
  """(cluster, dataset, template) -> {"n", "scores": metric -> checkpoint -> mean %}."""
  by_template: dict[tuple, list[int]] = defaultdict(list)
  for i, r in enumerate(rows):
    by_template[(r["cluster"], r["dataset"], r["template_id"])].append(i)
  return {key: {"n": len(idx), "scores": {m: {ck: _mean([v[i] for i in idx]) for ck, v in cks.items()}
                                          for m, cks in scores.items()}}
          for key, idx in sorted(by_template.items())}


def _pick(candidates: Mapping[int, float | None]) -> int | None:
  """The template with the highest score (the lowest id among ties); None when no template has one."""
  scored = [(v, -t) for t, v in candidates.items() if v is not None]
  return -max(scored)[1] if scored else None


def summarize_set(rows: Sequence[dict], scores: RowScores,
                  selection: tuple[Sequence[dict], RowScores] | None = None) -> dict:
  """{"overall", "clusters", "datasets", "templates"}, each with scores[metric][checkpoint].

  Per dataset, "best_template" is FLAN's best-template score: the template is chosen per metric and
  checkpoint on `selection` (rows and scores of the dev split) and its score on `rows` is reported;
  without `selection` it is chosen on `rows` themselves (an optimistic, oracle choice).
  """
  per_template = _template_scores(rows, scores)
  chosen_on = _template_scores(*selection) if selection else per_template
  templates = [{"cluster": c, "dataset": d, "template": t, **v} for (c, d, t), v in per_template.items()]
  datasets = []
  for c, d in sorted({(t["cluster"], t["dataset"]) for t in templates}):
    ts = [t for t in templates if t["dataset"] == d]
    best, best_id = {}, {}
    for m, cks in scores.items():
      best[m], best_id[m] = {}, {}
      for ck in cks:
        pick = _pick({t["template"]: chosen_on.get((c, d, t["template"]), {}).get("scores", {}).get(m, {}).get(ck)
                      for t in ts})
        best_id[m][ck] = pick
        best[m][ck] = next((t["scores"][m][ck] for t in ts if t["template"] == pick), None)
    datasets.append({"cluster": c, "dataset": d, "n": sum(t["n"] for t in ts), "templates": len(ts),
                     "scores": {m: {ck: _avg([t["scores"][m][ck] for t in ts]) for ck in cks}
                                for m, cks in scores.items()},
                     "best_template": best, "best_template_id": best_id})
  clusters = []
  for c in sorted({d["cluster"] for d in datasets}):
    ds = [d for d in datasets if d["cluster"] == c]
    clusters.append({"cluster": c, "datasets": len(ds),
                     **{key: {m: {ck: _avg([d[key][m][ck] for d in ds]) for ck in cks} for m, cks in scores.items()}
                        for key in ("scores", "best_template")}})
  overall = {m: {ck: _avg([c["scores"][m][ck] for c in clusters]) for ck in cks} for m, cks in scores.items()}
  overall_best = {m: {ck: _avg([c["best_template"][m][ck] for c in clusters]) for ck in cks}
                  for m, cks in scores.items()}
  return {"overall": overall, "overall_best_template": overall_best, "clusters": clusters, "datasets": datasets,
          "templates": templates}


def _fmt(v) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "–"
  return f"{v:.1f}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)


def markdown(summary: Mapping[str, dict], metrics: Sequence[str], checkpoints: Sequence[str], title: str,
             notes: Sequence[str] = ()) -> str:
  cks = list(checkpoints)
  cols = [(m, ck) for m in metrics for ck in cks]
  head = [f"{m} {ck}" for m, ck in cols]
  parts = [f"# {title}", "", "Zero-shot; scores in %, mean over templates unless noted; – where a metric does not "
           "apply (rank classification needs answer options).", ""]
  parts += [f"- {m}: {METRIC_TITLES.get(m, m)}" for m in metrics] + [""]
  parts.append(_table(["set", "cluster", "datasets"] + head,
                      [[s, c["cluster"], c["datasets"]] + [c["scores"][m][ck] for m, ck in cols]
                       for s, v in summary.items() for c in v["clusters"]]
                      + [[s, "**mean**", ""] + [v["overall"][m][ck] for m, ck in cols] for s, v in summary.items()]))
  parts += list(notes)
  parts += ["", "## Best template per cluster (chosen per dataset as the set's `selection` line says)", ""]
  parts += [f"- {s}: {v.get('selection', 'best template chosen on the reported split itself (oracle)')}"
            for s, v in summary.items()] + [""]
  parts.append(_table(["set", "cluster", "datasets"] + head,
                      [[s, c["cluster"], c["datasets"]] + [c["best_template"][m][ck] for m, ck in cols]
                       for s, v in summary.items() for c in v["clusters"]]
                      + [[s, "**mean**", ""] + [v["overall_best_template"][m][ck] for m, ck in cols]
                         for s, v in summary.items()]))
  parts += ["", "## Per dataset (mean over templates; then the best template's score and id)", ""]
  parts.append(_table(["set", "cluster", "dataset", "n", "templates"] + head + [f"best {h}" for h in head]
                      + [f"best id {h}" for h in head],
                      [[s, d["cluster"], d["dataset"], d["n"], d["templates"]]
                       + [d["scores"][m][ck] for m, ck in cols] + [d["best_template"][m][ck] for m, ck in cols]
                       + [d["best_template_id"][m][ck] for m, ck in cols]
                       for s, v in summary.items() for d in v["datasets"]]))
  parts += ["", "## Per template", ""]
  parts.append(_table(["set", "dataset", "template", "n"] + head,
                      [[s, t["dataset"], t["template"], t["n"]] + [t["scores"][m][ck] for m, ck in cols]
                       for s, v in summary.items() for t in v["templates"]]))
  return "\n".join(parts) + "\n"


def write_report(out_dir: str, sets: Mapping[str, tuple[list[dict], Mapping[str, list[dict]], RowScores]],
                 title: str, extra: Mapping | None = None,
                 selections: Mapping[str, tuple[str, Sequence[dict], RowScores]] | None = None,
                 notes: Sequence[str] = ()) -> tuple[dict, str]:
  """Writes report.json, report.md and predictions.jsonl; returns (summary, markdown).

  `sets[name] = (rows, outputs, scores)`: eval rows, per-checkpoint per-row
  outputs (prediction text, chosen option, ...) and per-row metric scores.
  `selections[name] = (description, rows, scores)`: the dev split that picks each dataset's best template.
  `notes`: Markdown lines shown under the main table (e.g. decontamination counts).
  """
  os.makedirs(out_dir, exist_ok=True)
  summary = {}
  for name, (rows, _, scores) in sets.items():
    sel = (selections or {}).get(name)
    summary[name] = summarize_set(rows, scores, sel[1:] if sel else None)
    if sel:
      summary[name]["selection"] = sel[0]
  first = next(iter(sets.values()), None)
  checkpoints = list(first[1]) if first else []
  metrics = [m for m in METRIC_TITLES if any(m in sc for _, _, sc in sets.values())]
  md = markdown(summary, metrics, checkpoints, title, notes)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump({"title": title, "metrics": metrics, "checkpoints": checkpoints, **(extra or {}), "sets": summary}, f,
              indent=1)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(md)
  with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
    for set_name, (rows, outputs, _) in sets.items():
      for i, r in enumerate(rows):
        rec = {k: v for k, v in r.items() if k != "input_ids"}
        f.write(json.dumps({"set": set_name, **rec, "outputs": {ck: o[i] for ck, o in outputs.items()}}) + "\n")
  for m in metrics:
    figures.cluster_bars(summary, m, checkpoints, os.path.join(out_dir, f"clusters_{m}.png"))
    figures.over_steps(summary, m, checkpoints, os.path.join(out_dir, f"over_steps_{m}.png"))
  figures.side_by_side_html(sets, title, os.path.join(out_dir, "side_by_side.html"))
  return summary, md
