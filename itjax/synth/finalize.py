"""The last step of every pipeline: mix in file examples, drop duplicates and contaminated examples, write
`data.jsonl` (Alpaca or chat JSONL that `itjax.data.jsonl` reads) and `report.json` (what every filter removed).

Dedup and decontamination reuse `itjax.data.quality`: exact and normalized duplicates of instruction + input +
output, and 13-gram overlap with the rendered examples of eval tasks (`--decontaminate TASK ...`; their test and
validation splits, `EVAL_SPLITS`, what the eval protocol reports and selects templates on).
`data.jsonl` is rebuilt from the journals on every run, so it always matches them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from itjax.data import jsonl, quality
from itjax.data.registry import EVAL_SPLITS
from itjax.errors import UserError
from itjax.synth.mixins import Mixin, render

logger = logging.getLogger("itjax")
DATA = "data.jsonl"
REPORT = "report.json"


def _text(row: dict) -> str:
  if "messages" in row:
    return "\n".join(m["content"] for m in row["messages"])
  return "\n".join((row["instruction"], row["input"], row["output"]))


def as_chat(row: dict) -> dict:
  """An Alpaca row as a one-exchange chat row (for mixing into multi-turn data)."""
  user = row["instruction"] + (f"\n\n{row['input']}" if row["input"].strip() else "")
  return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}],
          "provenance": row["provenance"]}


def clean(rows: Sequence[dict], *, decontaminate: Sequence[str] = (), index: Any = None,
          max_chars: int | None = None) -> tuple[list[dict], Counter]:
  """Rows without exact / normalized duplicates (first kept), contaminated or over-long ones; and removal counts.

  `index` is a `quality.NgramIndex`; without one, `decontaminate` names eval tasks or mixtures to build it from.
  """
  max_chars = jsonl.DEFAULT_MAX_CHARS if max_chars is None else max_chars
  if index is None and decontaminate:
    index = quality.eval_index(list(decontaminate), EVAL_SPLITS)
  removed: Counter = Counter()
  exact, normal, out = set(), set(), []
  for row in rows:
    text = _text(row)
    norm = quality.normalize(text)
    if text in exact:
      removed["exact_duplicate"] += 1
    elif norm in normal:
      removed["normalized_duplicate"] += 1
    elif index is not None and index.contains(text):
      removed["contaminated"] += 1
    elif len(text) > max_chars:
      removed["too_long"] += 1
    else:
      out.append(row)
    exact.add(text)
    normal.add(norm)
  return out, removed


def finalize(output_dir: str, rows: Sequence[dict], report: dict[str, Any], *, mixins: Sequence[Mixin] = (),
             decontaminate: Sequence[str] = (), index: Any = None, fmt: str = "alpaca") -> dict[str, Any]:
  """Writes data.jsonl (`fmt`: "alpaca" rows, or "chat" rows with `messages`) and report.json from the generated
  rows (+ mixins); returns the report."""
  mixed = []
  per_mixin = {}
  for m in mixins:
    rendered = [as_chat(r) for r in render(m)] if fmt == "chat" else render(m)
    per_mixin[m.name] = per_mixin.get(m.name, 0) + len(rendered)
    mixed += rendered
  kept, removed = clean([*rows, *mixed], decontaminate=decontaminate, index=index)
  path = os.path.join(output_dir, DATA)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in kept:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
  check = jsonl.validate(path, fmt)
  if not check.ok:  # the filters above should make this impossible
    raise RuntimeError(f"generated data does not read back as {fmt} JSONL: {check}")
  report = dict(report)
  report["final"] = {"format": fmt, "generated": len(rows), "mixed_in": per_mixin, "removed": dict(removed),
                     "written": len(kept), "decontaminated_against": list(decontaminate),
                     "decontaminated_splits": list(EVAL_SPLITS) if decontaminate else [], "path": path}
  with open(os.path.join(output_dir, REPORT), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  return report


def format_report(report: dict[str, Any]) -> str:
  """One line per stage: what went in, what came out, what each filter removed."""
  lines = [f"itjax data {report.get('command', '')}: {report.get('output_dir', '')}"]
  req = report.get("teacher_requests")
  if req:
    why = ", ".join(f"{k} {v}" for k, v in sorted((req.get("retry_reasons") or {}).items(), key=lambda kv: -kv[1]))
    lines.append(f"  teacher (this run): {req['requests']} requests, {req['retries']} retries"
                 f"{f' ({why})' if why else ''}, {req['failures']} failed after retrying, "
                 f"{report.get('seconds', 0)} s")
  for name, st in report.get("stages", {}).items():
    parts = [f"{k} {v}" for k, v in st.items() if not isinstance(v, dict)]
    removed = st.get("removed") or {}
    rm = ", ".join(f"{k} {v}" for k, v in sorted(removed.items(), key=lambda kv: -kv[1]))
    lines.append(f"  {name}: {', '.join(parts)}" + (f"; removed: {rm}" if rm else ""))
  fin = report.get("final", {})
  if fin:
    rm = ", ".join(f"{k} {v}" for k, v in sorted(fin["removed"].items())) or "none"
    mix = ", ".join(f"{k} {v}" for k, v in fin["mixed_in"].items()) or "none"
    lines.append(f"  final: {fin['generated']} generated + mixed in ({mix}); removed: {rm}; "
                 f"wrote {fin['written']} examples to {fin['path']}")
  return "\n".join(lines)


def register_output(name: str, output_dir: str, **kwargs: Any) -> list[str]:
  """Registers a finished run's data.jsonl as a JSONL task (`<name>_zs_noopt`, ...); returns the task names.

  A run that wrote no examples is a UserError naming it (and what its filters removed).

  `kwargs` go to `register_jsonl_task` (cluster, templates, on_error, ...).
  """
  path = os.path.join(output_dir, DATA)
  if not os.path.exists(os.path.join(output_dir, REPORT)) or not os.path.exists(path):
    raise UserError(f"{output_dir}: no finished `itjax data` run ({DATA} and {REPORT} missing); run or resume it")
  with open(os.path.join(output_dir, REPORT), encoding="utf-8") as f:
    final = json.load(f).get("final", {})
  with open(path, "rb") as f:
    empty = not any(line.strip() for line in f)
  if empty:  # a task of no examples fails only later, in training, and obscurely
    rm = ", ".join(f"{k} {v}" for k, v in sorted((final.get("removed") or {}).items())) or "none"
    raise UserError(f"{output_dir}: the `itjax data` run holds no examples ({DATA} is empty: "
                    f"{final.get('generated', 0)} generated, removed {rm}; see {REPORT}); nothing to register")
  return jsonl.register_jsonl_task(name, {"train": [path]}, final.get("format", "alpaca"), **kwargs)
