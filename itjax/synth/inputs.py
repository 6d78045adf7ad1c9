"""Reading what the pipelines start from: Self-Instruct seed tasks, and instruction sets to evolve or distill.

Seed tasks (`SEED_TASKS`, and any `--seed_tasks` file) are JSONL, one task a line, as Self-Instruct's:

    {"id": "seed_01", "name": "packing_list", "instruction": "Make a short packing list for ...",
     "instances": [{"input": "A three-day hiking trip ...", "output": "- Waterproof jacket ..."}],
     "is_classification": false}

`id` and `name` are optional; `instances` needs at least one {input, output} (input may be ""). A classification
task's outputs are labels from a small fixed set. Instruction sets are JSONL with `instruction` (+ `input`, or
Dolly's `context`), or `prompt`, or seed tasks (one item per instance); or a .txt file, one instruction a line.
Mistakes are UserErrors naming file:line and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

from itjax.errors import UserError

SEED_TASKS = os.path.join(os.path.dirname(__file__), "data", "seed_tasks.jsonl")


@dataclasses.dataclass(frozen=True)
class SeedTask:
  """A human-written task: its instruction, example instances and whether its outputs are class labels."""

  id: str
  instruction: str
  instances: tuple[tuple[str, str], ...]
  is_classification: bool


@dataclasses.dataclass(frozen=True)
class Item:
  """One instruction to evolve or answer: a stable id (for resuming), the instruction and its optional input."""

  id: str
  instruction: str
  input: str = ""

  @property
  def prompt(self) -> str:
    """Instruction and input as one prompt text."""
    return f"{self.instruction}\n\n{self.input}" if self.input.strip() else self.instruction


def _lines(path: str):
  try:
    f = open(path, encoding="utf-8")
  except FileNotFoundError:
    raise UserError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise UserError(f"{path}: is a directory, not a file") from None
  with f:
    try:
      for lineno, line in enumerate(f, start=1):
        if line.strip():
          yield lineno, line
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None


def _json(path: str, lineno: int, line: str) -> dict[str, Any]:
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
  if not isinstance(obj, dict):
    raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
  return obj


def json_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) for each non-blank line of a JSONL file; a bad line is a UserError at file:line."""
  for lineno, line in _lines(path):
    yield lineno, _json(path, lineno, line)


def _str(obj: dict, key: str, where: str, *, optional: bool = False, field: str | None = None) -> str:
  """obj[key] as a string (missing or null optional fields are ""); required fields must not be blank."""
  field = field or key
  if key not in obj or obj[key] is None:
    if optional:
      return ""
    raise UserError(f"{where}: field '{field}': missing (fields present: {', '.join(sorted(obj)) or 'none'})")
  v = obj[key]
  if not isinstance(v, str):
    raise UserError(f"{where}: field '{field}': expected a string, got {type(v).__name__}")
  if not optional and not v.strip():
    raise UserError(f"{where}: field '{field}': empty")
  return v


def _instances(obj: dict, where: str, *, need_output: bool = True) -> list[tuple[str, str]]:
  """The (input, output) pairs of a seed task's `instances`."""
  raw = obj.get("instances")
  if not isinstance(raw, list) or not raw:
    raise UserError(f"{where}: field 'instances': expected a non-empty list of {{input, output}} objects")
  out = []
  for i, inst in enumerate(raw):
    if not isinstance(inst, dict):
      raise UserError(f"{where}: field 'instances[{i}]': expected an object, got {type(inst).__name__}")
    at = f"instances[{i}]"
    out.append((_str(inst, "input", where, optional=True, field=f"{at}.input"),
                _str(inst, "output", where, optional=not need_output, field=f"{at}.output")))
  return out


def load_seed_tasks(path: str = SEED_TASKS) -> list[SeedTask]:
  """The seed tasks of a JSONL file (format in the module docstring); ids default to `seed_<line>`."""
  tasks, ids = [], set()
  for lineno, line in _lines(path):
    where = f"{path}:{lineno}"
    obj = _json(path, lineno, line)
    instruction = _str(obj, "instruction", where)
    tid = str(obj.get("id") or f"seed_{lineno}")
    if tid in ids:
      raise UserError(f"{where}: field 'id': duplicate id {tid!r}")
    ids.add(tid)
    instances = _instances(obj, where)
    clf = obj.get("is_classification", False)
    if not isinstance(clf, bool):
      raise UserError(f"{where}: field 'is_classification': expected true or false, got {clf!r}")
    tasks.append(SeedTask(tid, instruction.strip(), tuple(instances), clf))
  if not tasks:
    raise UserError(f"{path}: no seed tasks")
  return tasks


def read_items(path: str) -> list[Item]:
  """The instructions of a JSONL or text file (formats in the module docstring), with stable ids."""
  stem = os.path.splitext(os.path.basename(path))[0]
  items, ids = [], set()

  def add(item: Item, where: str) -> None:
    if item.id in ids:
      raise UserError(f"{where}: field 'id': duplicate id {item.id!r}")
    ids.add(item.id)
    items.append(item)

  text_file = not path.endswith((".jsonl", ".json"))
  for lineno, line in _lines(path):
    where = f"{path}:{lineno}"
    if text_file:
      add(Item(f"{stem}-{lineno}", line.strip()), where)
      continue
    obj = _json(path, lineno, line)
    base = str(obj.get("id") or f"{stem}-{lineno}")
    if "instances" in obj and "instruction" in obj:
      for k, (inp, _) in enumerate(_instances(obj, where, need_output=False)):
        add(Item(f"{base}-{k}", obj["instruction"].strip(), inp), where)
    elif "instruction" in obj:
      inp = _str(obj, "input", where, optional=True) or _str(obj, "context", where, optional=True)
      add(Item(base, _str(obj, "instruction", where).strip(), inp), where)
    elif "prompt" in obj:
      add(Item(base, _str(obj, "prompt", where).strip()), where)
    else:
      raise UserError(f"{where}: field 'instruction': missing (expected 'instruction' or 'prompt'; fields present: "
                      f"{', '.join(sorted(obj)) or 'none'})")
  if not items:
    raise UserError(f"{path}: no instructions")
  return items
