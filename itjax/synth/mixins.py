"""Examples mixed into generated data from files, each file with its own template: safety (refusal) examples,
negative examples (a wrong answer to explain and correct), or any JSONL rendered by a custom template.

A template maps a line's fields to the Alpaca fields with `{field}` placeholders. Fields used by the `instruction`
and `output` templates are required; fields used only by the `input` template may be missing (rendered empty).

    itjax data distill ... --mix safety=refusals.jsonl --mix negative=negatives.jsonl
    itjax data distill ... --mix my_kind=extra.jsonl --mix_templates templates.json   # {"my_kind": {...}}
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from collections.abc import Mapping, Sequence

from itjax.errors import UserError
from itjax.synth.inputs import json_lines


@dataclasses.dataclass(frozen=True)
class MixTemplate:
  """Format strings for the Alpaca fields of a mixed-in example."""

  instruction: str
  output: str
  input: str = ""

  def fields(self, part: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(getattr(self, part)) if f]


PRESETS: dict[str, MixTemplate] = {
    # {"prompt": "How do I pick a lock to get into my neighbour's house?", "response": "I can't help with ..."}
    "safety": MixTemplate("{prompt}", "{response}"),
    # {"instruction": ..., "input": ..., "output": <a correct answer>, "negative_output": <a wrong answer>,
    #  "explanation": <why it is wrong>}
    "negative": MixTemplate(
        "{instruction}\n\nHere is an incorrect answer:\n{negative_output}\n\nExplain what is wrong with it, then give "
        "a correct answer.", "{explanation}\n\nA correct answer: {output}", "{input}"),
}


@dataclasses.dataclass(frozen=True)
class Mixin:
  """A file of examples to mix in, the template that renders them, and at most `limit` of them (None: all)."""

  name: str
  path: str
  template: MixTemplate
  limit: int | None = None


def load_templates(path: str) -> dict[str, MixTemplate]:
  """Custom templates from a JSON file: {"name": {"instruction": ..., "output": ..., "input": ...}}."""
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise UserError(f"--mix_templates {path}: no such file") from None
  except json.JSONDecodeError as e:
    raise UserError(f"--mix_templates {path}:{e.lineno}: invalid JSON: {e.msg}") from None
  if not isinstance(raw, dict):
    raise UserError(f"--mix_templates {path}: expected an object of name -> template")
  out = {}
  for name, t in raw.items():
    if not isinstance(t, dict) or not all(isinstance(t.get(k), str) for k in ("instruction", "output")):
      raise UserError(f"--mix_templates {path}: template {name!r} needs string fields 'instruction' and 'output'")
    extra = set(t) - {"instruction", "output", "input"}
    if extra:
      raise UserError(f"--mix_templates {path}: template {name!r}: unknown fields {sorted(extra)}")
    out[name] = MixTemplate(t["instruction"], t["output"], t.get("input", ""))
  return out


def parse_mix_flags(specs: Sequence[str], templates: Mapping[str, MixTemplate] | None = None) -> list[Mixin]:
  """Mixins from `--mix NAME=PATH[@LIMIT]` flags; NAME is a preset or a --mix_templates name."""
  known = {**PRESETS, **(templates or {})}
  out = []
  for spec in specs:
    name, sep, path = spec.partition("=")
    if not sep or not path:
      raise UserError(f"--mix {spec!r}: expected NAME=PATH (NAME one of {', '.join(sorted(known))})")
    if name not in known:
      raise UserError(f"--mix {spec!r}: unknown template {name!r}; choose from {', '.join(sorted(known))} "
                      "or define it with --mix_templates")
    limit = None
    if "@" in path and path.rsplit("@", 1)[1].isdigit():
      path, n = path.rsplit("@", 1)
      limit = int(n)
    if not os.path.isfile(path):
      raise UserError(f"--mix {spec!r}: {path}: no such file")
    out.append(Mixin(name, path, known[name], limit))
  return out


def render(mixin: Mixin) -> list[dict]:
  """Alpaca rows (with provenance) of a mixin file; a missing or non-string field is a UserError at file:line."""
  t = mixin.template
  required = set(t.fields("instruction")) | set(t.fields("output"))
  rows = []
  for lineno, obj in json_lines(mixin.path):
    if mixin.limit is not None and len(rows) >= mixin.limit:
      break
    values = {}
    for f in required | set(t.fields("input")):
      v = obj.get(f)
      if v is None and f not in required:
        v = ""
      if not isinstance(v, str) or (f in required and not v.strip()):
        what = "missing" if v is None else ("empty" if isinstance(v, str) else f"expected a string, got "
                                                                              f"{type(v).__name__}")
        raise UserError(f"{mixin.path}:{lineno}: field '{f}': {what} (used by the {mixin.name!r} mix template)")
      values[f] = v
    rows.append({"instruction": t.instruction.format_map(values).strip(), "input": t.input.format_map(values).strip(),
                 "output": t.output.format_map(values).strip(),
                 "provenance": {"method": "mixin", "mixin": mixin.name, "file": os.path.basename(mixin.path),
                                "line": lineno}})
  return rows
