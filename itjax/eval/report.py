"""Held-out evaluation reports: report.json, report.md and predictions.jsonl.

Scores are grouped the way FLAN reports them: per template, per dataset (mean
over templates, and the best template), and per cluster (mean over its
datasets), for each evaluated checkpoint side by side.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

from itjax.eval.metrics import exact_match

METRIC = "exact_match"


def _em(rows: Sequence[dict], preds: Sequence[str]) -> float:
  return exact_match([r["target"] for r in rows], list(preds))


def summarize(sets: Mapping[str, tuple[list[dict], Mapping[str, list[str]]]]) -> dict:
  """{set: {"clusters": [...], "datasets": [...], "templates": [...]}} with one score per checkpoint."""
  out = {}
  for set_name, (rows, preds) in sets.items():
    by_template: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
      by_template[(r["cluster"], r["dataset"], r["template_id"])].append(i)
    templates = [
        {"cluster": c, "dataset": d, "template": t, "n": len(idx),
         "scores": {ck: _em([rows[i] for i in idx], [p[i] for i in idx]) for ck, p in preds.items()}}
        for (c, d, t), idx in sorted(by_template.items())]
    datasets = []
    for (c, d) in sorted({(t["cluster"], t["dataset"]) for t in templates}):
      ts = [t for t in templates if t["dataset"] == d]
      datasets.append({"cluster": c, "dataset": d, "n": sum(t["n"] for t in ts), "templates": len(ts),
                       "scores": {ck: sum(t["scores"][ck] for t in ts) / len(ts) for ck in preds},
                       "best_template": {ck: max(t["scores"][ck] for t in ts) for ck in preds}})
    clusters = []
    for c in sorted({d["cluster"] for d in datasets}):
      ds = [d for d in datasets if d["cluster"] == c]
      clusters.append({"cluster": c, "datasets": len(ds),
                       "scores": {ck: sum(d["scores"][ck] for d in ds) / len(ds) for ck in preds}})
    overall = {ck: sum(c["scores"][ck] for c in clusters) / len(clusters) for ck in preds} if clusters else {}
    out[set_name] = {"overall": overall, "clusters": clusters, "datasets": datasets, "templates": templates}
  return out


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)


def markdown(summary: dict, checkpoints: Sequence[str], title: str) -> str:
  cks = list(checkpoints)
  parts = [f"# {title}", "", f"Metric: {METRIC} (%), zero-shot, mean over templates unless noted.", ""]
  parts.append(_table(["set", "cluster", "datasets"] + cks,
                      [[s, c["cluster"], c["datasets"]] + [c["scores"][k] for k in cks]
                       for s, v in summary.items() for c in v["clusters"]]
                      + [[s, "**mean**", "", *[v["overall"][k] for k in cks]] for s, v in summary.items()]))
  parts += ["", "## Per dataset", ""]
  parts.append(_table(["set", "cluster", "dataset", "n", "templates"] + cks + [f"{k} (best template)" for k in cks],
                      [[s, d["cluster"], d["dataset"], d["n"], d["templates"]] + [d["scores"][k] for k in cks]
                       + [d["best_template"][k] for k in cks] for s, v in summary.items() for d in v["datasets"]]))
  parts += ["", "## Per template", ""]
  parts.append(_table(["set", "dataset", "template", "n"] + cks,
                      [[s, t["dataset"], t["template"], t["n"]] + [t["scores"][k] for k in cks]
                       for s, v in summary.items() for t in v["templates"]]))
  return "\n".join(parts) + "\n"


def write_report(out_dir: str, sets: Mapping[str, tuple[list[dict], Mapping[str, list[str]]]],
                 title: str, extra: Mapping | None = None) -> tuple[dict, str]:
  """Writes report.json, report.md and predictions.jsonl into out_dir; returns (summary, markdown)."""
  os.makedirs(out_dir, exist_ok=True)
  summary = summarize(sets)
  checkpoints = list(next(iter(sets.values()))[1]) if sets else []
  md = markdown(summary, checkpoints, title)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump({"title": title, "metric": METRIC, "checkpoints": checkpoints, **(extra or {}), "sets": summary}, f,
              indent=1)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(md)
  with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
    for set_name, (rows, preds) in sets.items():
      for i, r in enumerate(rows):
        rec = {k: v for k, v in r.items() if k != "input_ids"}
        f.write(json.dumps({"set": set_name, **rec, "predictions": {k: p[i] for k, p in preds.items()}}) + "\n")
  return summary, md
