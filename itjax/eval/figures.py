"""Report figures and the side-by-side page: PNG bar/line plots and an HTML table for human rating."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402


def cluster_bars(summary: Mapping[str, dict], metric: str, checkpoints: Sequence[str], path: str) -> str | None:
  """Per-cluster bars, one bar per checkpoint (base vs tuned), held-out and seen clusters together."""
  labels, values = [], {ck: [] for ck in checkpoints}
  for set_name, s in summary.items():
    for c in s["clusters"]:
      labels.append(f"{c['cluster']}\n({set_name})")
      for ck in checkpoints:
        values[ck].append(c["scores"].get(metric, {}).get(ck))
  if not labels or all(v is None for vs in values.values() for v in vs):
    return None
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels)), 4))
  width = 0.8 / len(checkpoints)
  for k, ck in enumerate(checkpoints):
    xs = [i + k * width for i in range(len(labels))]
    ax.bar(xs, [v if v is not None else 0.0 for v in values[ck]], width, label=ck)
  ax.set_xticks([i + width * (len(checkpoints) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
  ax.set_ylim(0, 100)
  return _save(fig, ax, f"{metric} (%)", f"{metric} per cluster", path)


def over_steps(summary: Mapping[str, dict], metric: str, checkpoints: Sequence[str], path: str) -> str | None:
  """Mean score of each eval set against training step, for checkpoints named step_<n>."""
  steps = [(int(m.group(1)), ck) for ck in checkpoints if (m := re.fullmatch(r"step_(\d+)", ck))]
  if len(steps) < 2:
    return None
  steps.sort()
  fig, ax = plt.subplots(figsize=(6, 4))
  for set_name, s in summary.items():
    ys = [s["overall"].get(metric, {}).get(ck) for _, ck in steps]
    ax.plot([n for n, _ in steps], [y if y is not None else float("nan") for y in ys], marker="o", label=set_name)
  ax.set_xlabel("training step")
  return _save(fig, ax, f"{metric} (%)", f"{metric} over training", path)


def _save(fig, ax, ylabel: str, title: str, path: str) -> str:
  """Labels, legend and title, then the PNG at `path` (the figure is closed)."""
  ax.set_ylabel(ylabel)
  ax.legend()
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def side_by_side_html(sets: Mapping[str, tuple[list[dict], Mapping[str, list[dict]], object]], title: str,
                      path: str, max_rows_per_set: int = 500) -> str:
  """One row per eval example: input, target and each checkpoint's output, for human rating."""
  cks = list(next(iter(sets.values()))[1]) if sets else []
  esc = lambda s: html.escape(str(s)).replace("\n", "<br>")  # noqa: E731
  out = [f"<!doctype html><meta charset='utf-8'><title>{esc(title)}</title>",
         "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
         "padding:4px;vertical-align:top;font-size:13px}.ok{background:#e6ffe6}.bad{background:#ffe6e6}</style>",
         f"<h1>{esc(title)}</h1>"]
  for set_name, (rows, outputs, _) in sets.items():
    out.append(f"<h2>{esc(set_name)}</h2><table><tr><th>#</th><th>task / template</th><th>input</th>"
               f"<th>target</th>" + "".join(f"<th>{esc(ck)}</th>" for ck in cks) + "</tr>")
    for i, r in enumerate(rows[:max_rows_per_set]):
      cells = []
      for ck in cks:
        o = outputs[ck][i]
        pred = o.get("prediction", "")
        cls = "ok" if pred.strip() == r["target"].strip() else "bad"
        extra = f"<br><i>option: {esc(o['option'])}</i>" if o.get("option") is not None else ""
        cells.append(f"<td class='{cls}'>{esc(pred)}{extra}</td>")
      out.append(f"<tr><td>{i}</td><td>{esc(r['task'])} / {r['template_id']}</td><td>{esc(r['inputs'])}</td>"
                 f"<td>{esc(r['target'])}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    if len(rows) > max_rows_per_set:
      out.append(f"<p>{len(rows) - max_rows_per_set} more rows in predictions.jsonl</p>")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(out))
  return path
