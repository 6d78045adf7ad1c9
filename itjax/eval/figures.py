"""Report figures and the side-by-side page: PNG bar/line plots and an HTML table for human rating.

A score that is missing (a metric a cluster or checkpoint does not have) is never drawn as 0: a cluster without
the metric is left out of its plot, and a missing bar beside others is marked "n/a".
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

# Of an untruncated prompt, the side-by-side page shows this many characters at each end.
PROMPT_KEEP_CHARS = 2048
_BASELINE_STYLES = {"chance": ":", "majority": "--"}


def cluster_bars(summary: Mapping[str, dict], metric: str, checkpoints: Sequence[str], path: str,
                 baselines: Sequence[str] = ()) -> str | None:
  """Per-cluster bars, one bar per checkpoint (base vs tuned), held-out and seen clusters together.

  Clusters without the metric are left out; a checkpoint's missing score is marked "n/a". `baselines` (names
  in each cluster's "baselines": chance, majority) are drawn as lines across their cluster's bars.
  """
  labels, values, base = [], {ck: [] for ck in checkpoints}, []
  for set_name, s in summary.items():
    for c in s["clusters"]:
      row = [c["scores"].get(metric, {}).get(ck) for ck in checkpoints]
      if all(v is None for v in row):
        continue
      labels.append(f"{c['cluster']}\n({set_name})")
      for ck, v in zip(checkpoints, row, strict=True):
        values[ck].append(v)
      base.append({b: c.get("baselines", {}).get(b) for b in baselines})
  if not labels:
    return None
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels)), 4))
  width = 0.8 / len(checkpoints)
  top = max([100.0] + [v for vs in values.values() for v in vs if v is not None])
  for k, ck in enumerate(checkpoints):
    present = [(i + k * width, v) for i, v in enumerate(values[ck]) if v is not None]
    ax.bar([x for x, _ in present], [v for _, v in present], width, label=ck, color=f"C{k}")
    for i, v in enumerate(values[ck]):
      if v is None:
        ax.text(i + k * width, 1.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="0.4")
  for b in baselines:
    drawn = False
    for i, rates in enumerate(base):
      if rates.get(b) is None:
        continue
      ax.hlines(rates[b], i - width / 2, i + width * (len(checkpoints) - 0.5), colors="k",
                linestyles=_BASELINE_STYLES.get(b, "-"), label=None if drawn else f"baseline: {b}")
      drawn = True
  ax.set_xticks([i + width * (len(checkpoints) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
  ax.set_ylim(0, top)
  return _save(fig, ax, f"{metric} (%)", f"{metric} per cluster", path)


def over_steps(summary: Mapping[str, dict], metric: str, checkpoints: Sequence[str], path: str) -> str | None:
  """Mean score of each eval set against training step, for checkpoints named step_<n> (sets without the metric
  are left out; a missing point is a gap)."""
  steps = [(int(m.group(1)), ck) for ck in checkpoints if (m := re.fullmatch(r"step_(\d+)", ck))]
  if len(steps) < 2:
    return None
  steps.sort()
  lines = {name: [s["overall"].get(metric, {}).get(ck) for _, ck in steps] for name, s in summary.items()}
  lines = {name: ys for name, ys in lines.items() if any(y is not None for y in ys)}
  if not lines:
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  for set_name, ys in lines.items():
    ax.plot([n for n, _ in steps], [y if y is not None else float("nan") for y in ys], marker="o", label=set_name)
  ax.set_xlabel("training step")
  return _save(fig, ax, f"{metric} (%)", f"{metric} over training", path)


def line_plot(lines: Mapping[str, Sequence[float | None]], steps: Sequence[int], path: str, title: str) -> str:
  """Each named series against the training step (a missing point is a gap)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, ys in lines.items():
    ax.plot(list(steps), [y if y is not None else float("nan") for y in ys], label=name)
  ax.set_xlabel("training step")
  return _save(fig, ax, "value", title, path)


def _save(fig, ax, ylabel: str, title: str, path: str) -> str:
  """Labels, legend and title, then the PNG at `path` (the figure is closed)."""
  ax.set_ylabel(ylabel)
  ax.legend()
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _esc(s) -> str:
  return html.escape(str(s)).replace("\n", "<br>")


def capped(text: str, keep: int = PROMPT_KEEP_CHARS) -> str:
  """`text`, or its first and last `keep` characters around a note of how many were left out."""
  if len(text) <= 2 * keep + 100:
    return text
  return f"{text[:keep]}\n[… {len(text) - 2 * keep:,} characters left out …]\n{text[-keep:]}"


def prompt_cell(row: Mapping) -> str:
  """What the model saw (`inputs`); when the prompt was cut, a note of how many tokens and, collapsed, the
  untruncated text (capped)."""
  cell = _esc(row.get("inputs", ""))
  cut = row.get("inputs_cut_tokens")
  if not cut:
    return cell
  full = str(row.get("inputs_untruncated", ""))
  return (f"<div class='cut'>truncated: {int(cut):,} tokens cut</div>{cell}"
          f"<details><summary>untruncated prompt ({len(full):,} characters)</summary>{_esc(capped(full))}"
          "</details>")


def _colour(value: float | None) -> tuple[str, str]:
  """(class, style) of a score in %: correct / incorrect at 100 / 0, a red-to-green shade between."""
  if value is None:
    return "na", ""
  if value >= 100.0:
    return "ok", ""
  if value <= 0.0:
    return "bad", ""
  return "part", f" style='background:hsl({1.2 * value:.0f},70%,88%)'"


def _output_cell(row: Mapping, o: Mapping) -> str:
  """One checkpoint's output, coloured by the row's primary metric (its `metrics[0]`; a corpus metric by its
  per-row stand-in, e.g. sentence BLEU); without per-row scores, by exact match."""
  pred = o.get("prediction", "")
  scores = o.get("scores")
  if scores is None:
    metric, value = "exact_match", 100.0 * (pred.strip() == str(row.get("target", "")).strip())
  else:
    metric = (row.get("metrics") or ["exact_match"])[0]
    if metric not in scores and f"sentence_{metric}" in scores:
      metric = f"sentence_{metric}"
    value = scores.get(metric)
  cls, style = _colour(value)
  extra = f"<br><i>option: {_esc(o['option'])}</i>" if o.get("option") is not None else ""
  note = f"<br><small>{_esc(metric)}: {value:.1f}</small>" if value is not None else ""
  return f"<td class='{cls}'{style}>{_esc(pred)}{extra}{note}</td>"


def side_by_side_html(sets: Mapping[str, tuple[list[dict], Mapping[str, list[dict]], object]], title: str,
                      path: str, max_rows_per_set: int = 500) -> str:
  """One row per eval example: the prompt the model saw, target and each checkpoint's output, for human rating."""
  cks = list(next(iter(sets.values()))[1]) if sets else []
  out = [f"<!doctype html><meta charset='utf-8'><title>{_esc(title)}</title>",
         "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
         "padding:4px;vertical-align:top;font-size:13px}.ok{background:#e6ffe6}.bad{background:#ffe6e6}"
         ".cut{color:#a60;font-style:italic}details{color:#555}</style>",
         f"<h1>{_esc(title)}</h1>",
         "<p>Outputs are coloured by the task's primary metric: green correct, red wrong, shades between for "
         "graded metrics (ROUGE, F1, sentence BLEU).</p>"]
  for set_name, (rows, outputs, _) in sets.items():
    out.append(f"<h2>{_esc(set_name)}</h2><table><tr><th>#</th><th>task / template</th><th>input</th>"
               f"<th>target</th>" + "".join(f"<th>{_esc(ck)}</th>" for ck in cks) + "</tr>")
    for i, r in enumerate(rows[:max_rows_per_set]):
      cells = "".join(_output_cell(r, outputs[ck][i]) for ck in cks)
      out.append(f"<tr><td>{i}</td><td>{_esc(r['task'])} / {r['template_id']}</td><td>{prompt_cell(r)}</td>"
                 f"<td>{_esc(r['target'])}</td>{cells}</tr>")
    out.append("</table>")
    if len(rows) > max_rows_per_set:
      out.append(f"<p>{len(rows) - max_rows_per_set} more rows in predictions.jsonl</p>")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(out))
  return path
