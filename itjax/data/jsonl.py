"""Instruction data from JSONL files (Alpaca, Dolly, chat, prompt/completion), strictly validated.

Every line is checked before it reaches a model: malformed JSON, a missing or
mistyped field, an empty target, bad UTF-8 or an over-long example is a
`UserError` naming `file:line` and the field. With `on_error="skip"` bad lines
are dropped instead, but counted per reason, logged and kept on the source
(`source.skipped`, `source.reports`), so nothing disappears silently.

Every format yields the same template fields (`FIELDS`), so any template works
with any format (`read_jsonl`). Registered chat tasks are the exception: their source
yields the turns themselves and `itjax.data.chat` renders them, with loss on every
assistant turn. Static templates cannot branch on an empty `input`, so the
source precomputes the input-dependent pieces (`input_block`, `input_clause`,
...), which are empty when there is no input.

Answer options (rank classification; the task then also gets its `_zs_opt` variant, and every
example carries its "options", a 1-D string list without padding):

- `options_field="choices"`: each line's own list of at least 2 distinct non-empty strings;
- `options=["positive", "negative"]`: one label set for the task;
- `options="from_answers"`: the sorted distinct answers of the train split, when there are at
  most `MAX_DERIVED_OPTIONS` (else a UserError: free-form answers are not labels).

Options and answers are compared stripped of surrounding whitespace. An answer that is not among
its options, or a bad options value, is an error naming `file:line` and the field (a counted skip,
`answer_not_in_options` / `bad_options`, under `on_error="skip"`).

Splits: `paths` maps split names to files, or, with `splits={"train": 0.9, "validation": 0.05,
"test": 0.05}`, names the file(s) to slice: each line goes to the split its group's stable hash
bucket falls in (`itjax.data.splits`: by `group_key`, a field, a callable or the "passage" rule for
pre-templated prompts; `split_seed` picks another slicing). Counts (`num_input_examples`) respect
the slicing; `source.reports[path].splits` has the lines per split. `itjax.data.pretemplated`
registers one dataset's pre-templated files (one per template) as one task family.

Validation runs eagerly, in Python, the first time a split is read (or counted):
errors raised inside a `tf.data` generator would reach the user wrapped in a
TensorFlow error, so by the time the generator runs the file is known good.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import seqio
import tensorflow as tf

from itjax.data import chat, row_index, scan_cache
from itjax.data import splits as splits_lib
from itjax.data.tasks import TRAIN_SPLIT, register_instruction_task
from itjax.data.templates import Template
from itjax.errors import UserError

logger = logging.getLogger("itjax")

FORMATS = ("alpaca", "dolly", "chat", "prompt_completion")
ON_ERROR = ("raise", "skip")
DEFAULT_MAX_CHARS = 65_536
END_OF_TEXT = "<|endoftext|>"
TEMPLATE_ID = "template_id"  # pre-templated files (`itjax.data.pretemplated`): the template a line was rendered with

# Derived fields: `prefix + input` when the example has an input, else "".
INPUT_FIELDS = {
    "input_block": "\n\n### Input:\n",  # Alpaca
    "input_labeled": "\nInput: ",
    "input_plain": "\n\n",
}
INPUT_CLAUSE = ", paired with an input that provides further context"
FIELDS = ("instruction", "input", "input_clause", *INPUT_FIELDS)

# Skip reasons (the keys of `skipped` counts).
INVALID_JSON = "invalid_json"
NOT_UTF8 = "not_utf8"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_TARGET = "empty_target"
EMPTY_FIELD = "empty_field"
BAD_ROLE = "bad_role"
BAD_TURNS = "bad_turns"
TOO_LONG = "too_long"
BAD_OPTIONS = "bad_options"  # an options_field value that is not a list of >= 2 distinct non-empty strings
NOT_AN_OPTION = "answer_not_in_options"
BAD_GROUP_KEY = "bad_group_key"  # a group_key callable that failed (split slicing)

# Answer options: `options=FROM_ANSWERS` takes the train split's distinct answers, when there are at most this many.
FROM_ANSWERS = "from_answers"
MAX_DERIVED_OPTIONS = 20
TARGET_FIELDS = {"alpaca": "output", "dolly": "response", "prompt_completion": "completion"}

ALPACA_TEMPLATE = Template(
    "Below is an instruction that describes a task{input_clause}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}{input_block}\n\n### Response:")
ALPACA_VARIATIONS = (
    Template("### Instruction:\n{instruction}{input_block}\n\n### Response:"),
    Template("Instruction: {instruction}{input_labeled}\nOutput:"),
    Template("{instruction}{input_plain}"),
)
ALPACA_TEMPLATES = (ALPACA_TEMPLATE, *ALPACA_VARIATIONS)
# For chat read as template fields (`read_jsonl`): the instruction is the rendered "User: ...\nAssistant: ..."
# history. Registered chat tasks render their turns in `itjax.data.chat` instead.
CHAT_TEMPLATES = (Template("{instruction}\nAssistant:"),)
PROMPT_TEMPLATES = (Template("{instruction}"),)
DEFAULT_TEMPLATES = {"alpaca": ALPACA_TEMPLATES, "dolly": ALPACA_TEMPLATES, "chat": CHAT_TEMPLATES,
                     "prompt_completion": PROMPT_TEMPLATES}

CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


class Turn(NamedTuple):
  """One chat turn; roles normalized to system / user / assistant."""

  role: str
  content: str


@dataclasses.dataclass
class Report:
  """What a full read of one file found: valid lines and skipped lines per reason."""

  path: str
  fmt: str
  valid: int = 0
  blank: int = 0  # whitespace-only lines: not examples, not errors
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  first_error: dict[str, str] = dataclasses.field(default_factory=dict)  # reason -> first message
  splits: dict[str, int] = dataclasses.field(default_factory=dict)  # sliced files (`splits=`): valid lines per split

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  @property
  def ok(self) -> bool:
    return not self.skipped

  def __str__(self) -> str:
    total = self.valid + self.num_skipped
    head = f"{self.path} ({self.fmt}): {self.valid} of {total} lines valid"
    if self.ok:
      return head
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
    firsts = "".join(f"\n  {self.first_error[r]}" for r in sorted(self.skipped))
    return f"{head}; skipped {self.num_skipped} ({reasons}); first of each:{firsts}"


class _BadLine(Exception):
  """A line that fails validation: why (a skip reason), which field, what is wrong."""

  def __init__(self, reason: str, field: str | None, message: str):
    super().__init__(message)
    self.reason, self.field, self.message = reason, field, message

  def located(self, path: str, lineno: int) -> str:
    where = f"{path}:{lineno}: "
    return where + (f"field '{self.field}': {self.message}" if self.field else self.message)


# --- field checks ---------------------------------------------------------------------------------------------------
_JSON_TYPES = {str: "string", int: "int", float: "float", bool: "bool", list: "list", dict: "object",
               type(None): "null"}


def _type_name(v: Any) -> str:
  return _JSON_TYPES.get(type(v), type(v).__name__)


def _get(obj: Mapping, key: str, field: str | None = None, *, optional: bool = False) -> str:
  """obj[key] as a string; missing optional fields and null ones are ""."""
  field = field or key
  if key not in obj:
    if optional:
      return ""
    present = ", ".join(sorted(obj)) or "none"
    raise _BadLine(MISSING_FIELD, field, f"missing (fields present: {present})")
  v = obj[key]
  if v is None and optional:
    return ""
  if not isinstance(v, str):
    raise _BadLine(WRONG_TYPE, field, f"expected a string, got {_type_name(v)}")
  return v


def _nonempty(v: str, field: str, *, target: bool) -> str:
  if not v.strip():
    raise _BadLine(EMPTY_TARGET if target else EMPTY_FIELD, field,
                   "empty target (nothing to learn)" if target else "empty")
  return v


def _check_length(texts: Mapping[str, str], max_chars: int | None) -> None:
  if max_chars is None:
    return
  total = sum(len(v) for v in texts.values())
  if total > max_chars:
    field = max(texts, key=lambda k: len(texts[k]))
    raise _BadLine(TOO_LONG, field, f"example is {total} characters ({len(texts[field])} in this field), "
                                    f"over max_chars={max_chars}")


def _with_input(instruction: str, inp: str, answer: str) -> dict[str, str]:
  has = bool(inp.strip())
  return {"instruction": instruction, "input": inp, "input_clause": INPUT_CLAUSE if has else "",
          **{k: (p + inp if has else "") for k, p in INPUT_FIELDS.items()}, "answer": answer}


# --- formats: a parsed JSON object -> template fields -----------------------------------------------------------------
def _alpaca(obj: Mapping, max_chars: int | None) -> dict[str, str]:
  instruction = _nonempty(_get(obj, "instruction"), "instruction", target=False)
  inp = _get(obj, "input", optional=True)
  output = _nonempty(_get(obj, "output"), "output", target=True)
  _check_length({"instruction": instruction, "input": inp, "output": output}, max_chars)
  return _with_input(instruction, inp, output)


def _dolly(obj: Mapping, max_chars: int | None) -> dict[str, str]:
  instruction = _nonempty(_get(obj, "instruction"), "instruction", target=False)
  context = _get(obj, "context")
  response = _nonempty(_get(obj, "response"), "response", target=True)
  _get(obj, "category", optional=True)  # type-checked, not a template field
  _check_length({"instruction": instruction, "context": context, "response": response}, max_chars)
  return _with_input(instruction, context, response)


def _prompt_completion(obj: Mapping, max_chars: int | None) -> dict[str, str]:
  prompt = _nonempty(_get(obj, "prompt"), "prompt", target=False)
  completion = _get(obj, "completion")
  if completion.endswith(END_OF_TEXT):
    completion = completion[:-len(END_OF_TEXT)]
  _nonempty(completion, "completion", target=True)
  _check_length({"prompt": prompt, "completion": completion}, max_chars)
  return _with_input(prompt, "", completion)


def _turns(obj: Mapping, max_chars: int | None) -> list[Turn]:
  """Validated turns: optional leading system turn, then user/assistant alternating, ending with assistant."""
  if "messages" in obj or "conversations" not in obj:
    key, role_key, content_key, roles = "messages", "role", "content", {r: r for r in CHAT_ROLES}
  else:  # ShareGPT
    key, role_key, content_key, roles = "conversations", "from", "value", SHAREGPT_ROLES
  if key not in obj:
    present = ", ".join(sorted(obj)) or "none"
    raise _BadLine(MISSING_FIELD, key, f"missing (expected 'messages' or 'conversations'; fields present: {present})")
  raw = obj[key]
  if not isinstance(raw, list):
    raise _BadLine(WRONG_TYPE, key, f"expected a list, got {_type_name(raw)}")
  if not raw:
    raise _BadLine(BAD_TURNS, key, "no turns")
  turns = []
  for i, m in enumerate(raw):
    at = f"{key}[{i}]"
    if not isinstance(m, dict):
      raise _BadLine(WRONG_TYPE, at, f"expected an object, got {_type_name(m)}")
    role = _get(m, role_key, f"{at}.{role_key}")
    if role not in roles:
      allowed = ", ".join(repr(r) for r in roles)
      raise _BadLine(BAD_ROLE, f"{at}.{role_key}", f"expected one of {allowed}, got {role!r}")
    role = roles[role]
    content = _get(m, content_key, f"{at}.{content_key}")
    turns.append(Turn(role, content))
  start = 1 if turns[0].role == "system" else 0
  for i in range(start, len(turns)):
    want = "user" if (i - start) % 2 == 0 else "assistant"
    if turns[i].role != want:
      why = "only the first turn may be 'system'" if turns[i].role == "system" else "turns alternate user, assistant"
      raise _BadLine(BAD_TURNS, f"{key}[{i}].{role_key}", f"expected {want!r}, got {turns[i].role!r} ({why})")
  if turns[-1].role != "assistant":
    raise _BadLine(BAD_TURNS, f"{key}[{len(turns) - 1}].{role_key}",
                   f"the last turn must be the assistant's (the target), got {turns[-1].role!r}")
  for i in range(start, len(turns)):
    _nonempty(turns[i].content, f"{key}[{i}].{content_key}", target=i == len(turns) - 1)
  _check_length({f"{key}[{i}].{content_key}": t.content for i, t in enumerate(turns)}, max_chars)
  return turns


def render_history(turns: Sequence[Turn]) -> str:
  """'User: ...\\nAssistant: ...\\nUser: ...': every turn but the last (empty system prompts left out)."""
  return "\n".join(f"{ROLE_LABELS[t.role]}: {t.content}" for t in turns[:-1] if t.content.strip())


def _chat(obj: Mapping, max_chars: int | None) -> dict[str, str]:
  turns = _turns(obj, max_chars)
  return _with_input(render_history(turns), "", turns[-1].content)


_PARSERS = {"alpaca": _alpaca, "dolly": _dolly, "chat": _chat, "prompt_completion": _prompt_completion}


# --- reading lines ----------------------------------------------------------------------------------------------------
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_unicode(obj: Any, path: str = "") -> tuple[str, str] | None:
  """(field, char) of the first string (key or value) holding a surrogate: bad bytes or a lone \\uD8xx escape."""
  if isinstance(obj, str):
    m = _SURROGATE.search(obj)
    return (path, m.group()) if m else None
  items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
  for k, v in items:
    sub = f"{path}[{k}]" if isinstance(k, int) else (f"{path}.{k}" if path else k)
    if isinstance(k, str) and _SURROGATE.search(k):
      return sub, _SURROGATE.search(k).group()
    found = _bad_unicode(v, sub)
    if found:
      return found
  return None


def _parse_object(obj: dict, fmt: str | Callable[[dict, int | None], Any], max_chars: int | None) -> Any:
  if callable(fmt):  # a format defined in another module (`scan_parsed`)
    return fmt(obj, max_chars)
  if fmt == "chat_turns":
    return _turns(obj, max_chars)
  return _PARSERS[fmt](obj, max_chars)


def _load(raw: bytes) -> dict:
  """The line's JSON object; bad UTF-8, invalid JSON or a non-object is a `_BadLine`."""
  try:
    raw.decode("utf-8")
    bad_bytes = None
  except UnicodeDecodeError as e:
    bad_bytes = e
  text = raw.decode("utf-8", "surrogateescape")
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    if bad_bytes:
      raise _BadLine(NOT_UTF8, None, f"invalid UTF-8 byte 0x{raw[bad_bytes.start]:02x} at byte "
                                     f"{bad_bytes.start + 1}") from None
    raise _BadLine(INVALID_JSON, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
  if bad_bytes or _ESCAPED_SURROGATE.search(text):
    found = _bad_unicode(obj)
    if found:
      field, ch = found
      what = (f"invalid UTF-8 byte 0x{ord(ch) - 0xdc00:02x}" if bad_bytes and 0xdc80 <= ord(ch) <= 0xdcff
              else f"invalid Unicode (lone surrogate \\u{ord(ch):04x})")
      raise _BadLine(NOT_UTF8, field or None, what)
  if not isinstance(obj, dict):
    raise _BadLine(WRONG_TYPE, None, f"expected a JSON object, got {_type_name(obj)}")
  return obj


def _open(path: str):
  if "://" in path:
    if not tf.io.gfile.exists(path):
      raise UserError(f"{path}: no such file")
    return tf.io.gfile.GFile(path, "rb")
  try:
    return open(path, "rb")
  except FileNotFoundError:
    raise UserError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise UserError(f"{path}: is a directory, not a JSONL file") from None


def _stat(path: str) -> tuple[int, int] | None:
  """A local file's size and modification time (None for remote files: not checked)."""
  if "://" in path:
    return None
  try:
    st = os.stat(path)
  except OSError:
    return None  # reading it reports the missing file
  return st.st_size, st.st_mtime_ns


def _check_options(fmt: str, on_error: str) -> None:
  if fmt not in FORMATS:
    close = difflib.get_close_matches(fmt, FORMATS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown JSONL format {fmt!r} (choose from {', '.join(FORMATS)}){hint}")
  if on_error not in ON_ERROR:
    raise UserError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")


def _scan(path: str, fmt: str, *, on_error: str, max_chars: int | None, report: Report | None = None,
          check: Callable[[dict, Any], Any] | None = None, spans: bool = False) -> Iterator[Any]:
  """Parsed examples of `path`; bad lines raise UserError or are counted in `report` (skip policy).

  With `check`, yields `check(obj, example)` instead (the raw JSON object and its parse); a `_BadLine`
  it raises is the line's error like any other. With `spans`, yields (start, end, value): the line's bytes.
  """
  report = report if report is not None else Report(str(path), fmt)
  end = 0
  with _open(str(path)) as f:
    for lineno, raw in enumerate(f, start=1):
      start, end = end, end + len(raw)
      if lineno == 1 and raw.startswith(_BOM):
        raw, start = raw[3:], start + 3
      if not raw.strip():
        report.blank += 1
        continue
      try:
        ex = _parse_line(raw, fmt, max_chars, check)
      except _BadLine as e:
        msg = e.located(str(path), lineno)
        if on_error == "raise":
          raise UserError(msg) from None
        report.skipped[e.reason] = report.skipped.get(e.reason, 0) + 1
        report.first_error.setdefault(e.reason, msg)
        continue
      report.valid += 1
      yield (start, end, ex) if spans else ex


_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark


def _parse_line(raw: bytes, fmt: str, max_chars: int | None, check: Callable[[dict, Any], Any] | None) -> Any:
  """One line's example (or `check(obj, example)`); a `_BadLine` when it is not valid."""
  obj = _load(raw)
  ex = _parse_object(obj, fmt, max_chars)
  return check(obj, ex) if check is not None else ex


def scan_parsed(path: str, parse: Callable[[dict, int | None], Any], report: Report, *, on_error: str = "raise",
                max_chars: int | None = DEFAULT_MAX_CHARS) -> Iterator[Any]:
  """`parse(obj, max_chars)` of each valid line (a format defined elsewhere, e.g. `itjax.data.preference`), with
  the built-in formats' errors and skip counts; `parse` raises `BadLine` for a bad line."""
  if on_error not in ON_ERROR:
    raise UserError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
  return _scan(path, parse, on_error=on_error, max_chars=max_chars, report=report)


# The line checks, for formats defined in other modules.
BadLine, get_string, nonempty, check_length, chat_turns = _BadLine, _get, _nonempty, _check_length, _turns


def read_jsonl(path: str | os.PathLike, fmt: str, *, on_error: str = "raise", max_chars: int | None = DEFAULT_MAX_CHARS,
               report: Report | None = None) -> Iterator[dict[str, str]]:
  """The template fields (`FIELDS` + "answer") of each valid line, in file order; skips are logged at the end."""
  _check_options(fmt, on_error)
  report = report if report is not None else Report(os.fspath(path), fmt)

  def rows():
    yield from _scan(os.fspath(path), fmt, on_error=on_error, max_chars=max_chars, report=report)
    _log_skipped(report)

  return rows()


def read_chat(path: str | os.PathLike, *, on_error: str = "raise", max_chars: int | None = DEFAULT_MAX_CHARS,
              report: Report | None = None) -> list[list[Turn]]:
  """The structured turns of each conversation (for multi-turn training with assistant-only loss)."""
  _check_options("chat", on_error)
  report = report if report is not None else Report(os.fspath(path), "chat")
  convs = list(_scan(os.fspath(path), "chat_turns", on_error=on_error, max_chars=max_chars, report=report))
  _log_skipped(report)
  return convs


def validate(path: str | os.PathLike, fmt: str, *, max_chars: int | None = DEFAULT_MAX_CHARS) -> Report:
  """Reads the whole file and reports valid lines and skipped lines per reason; never builds a dataset."""
  _check_options(fmt, "skip")
  report = Report(os.fspath(path), fmt)
  for _ in _scan(os.fspath(path), fmt, on_error="skip", max_chars=max_chars, report=report):
    pass
  return report


def _log_skipped(report: Report) -> None:
  if not report.ok:
    logger.warning("skipped bad lines (on_error='skip'): %s", report)


# --- answer options ---------------------------------------------------------------------------------------------------
def label_set(options: Sequence[str], where: str) -> tuple[str, ...]:
  """A task's answer options checked: at least 2 distinct non-empty strings, kept stripped."""
  if isinstance(options, str | bytes) or not isinstance(options, Sequence):
    raise UserError(f"{where}: expected a list of strings or {FROM_ANSWERS!r}, got {options!r}")
  out = []
  for o in options:
    if not isinstance(o, str) or not o.strip():
      raise UserError(f"{where}: options must be non-empty strings, got {o!r}")
    if o.strip() in out:
      raise UserError(f"{where}: duplicate option {o.strip()!r}")
    out.append(o.strip())
  if len(out) < 2:
    raise UserError(f"{where}: rank classification needs at least 2 options, got {len(out)}")
  return tuple(out)


def check_options(options: Sequence[str] | str | None, options_field: str | None, fmt: str, where: str
                  ) -> tuple[str, ...] | str | None:
  """The task-level options: a label set, `FROM_ANSWERS` or None; UserError for bad values or combinations."""
  if options is not None and options_field is not None:
    raise UserError(f"{where}: give options= (one label set) or options_field= (choices per line), not both")
  if fmt == "chat" and (options is not None or options_field is not None):
    raise UserError(f"{where}: answer options do not apply to chat tasks")
  if options_field is not None and (not isinstance(options_field, str) or not options_field):
    raise UserError(f"{where}: options_field must be a field name, got {options_field!r}")
  if options is None or options == FROM_ANSWERS:
    return options
  if isinstance(options, str):
    raise UserError(f"{where}: options={options!r}: expected a list of strings or {FROM_ANSWERS!r}")
  return label_set(options, f"{where}: options")


def _show(options: Sequence[str], n: int = 8) -> str:
  head = ", ".join(repr(o) for o in options[:n])
  return head + (f", ... ({len(options)} in all)" if len(options) > n else "")


def _line_options(obj: Mapping, field: str) -> tuple[str, ...]:
  """A line's own answer options (`options_field`): a list of at least 2 distinct non-empty strings, stripped."""
  if field not in obj:
    raise _BadLine(MISSING_FIELD, field, f"missing (fields present: {', '.join(sorted(obj)) or 'none'})")
  raw = obj[field]
  if not isinstance(raw, list):
    raise _BadLine(WRONG_TYPE, field, f"expected a list of strings (the answer options), got {_type_name(raw)}")
  out: list[str] = []
  for i, o in enumerate(raw):
    if not isinstance(o, str):
      raise _BadLine(WRONG_TYPE, f"{field}[{i}]", f"expected a string, got {_type_name(o)}")
    if not o.strip():
      raise _BadLine(BAD_OPTIONS, f"{field}[{i}]", "empty option")
    if o.strip() in out:
      raise _BadLine(BAD_OPTIONS, field, f"duplicate option {o.strip()!r}")
    out.append(o.strip())
  if len(out) < 2:
    raise _BadLine(BAD_OPTIONS, field, f"rank classification needs at least 2 options, got {len(out)}")
  return tuple(out)


def _check_answer(answer: str, options: Sequence[str], field: str | None, what: str) -> None:
  if answer.strip() not in options:
    raise _BadLine(NOT_AN_OPTION, field, f"answer {answer.strip()!r} is not {what} ({_show(options)})")


# --- seqio source -----------------------------------------------------------------------------------------------------
Files = Sequence[str | os.PathLike] | str | os.PathLike
PathsArg = Mapping[str, Files] | Files  # split -> file(s); with `splits=`, the file(s) to slice


def _file_list(files: Files) -> list[str]:
  return [os.fspath(files)] if isinstance(files, str | os.PathLike) else [os.fspath(x) for x in files]


def _split_paths(paths: PathsArg, splitter: splits_lib.Splitter | None) -> dict[str, list[str]]:
  """split -> files; with a splitter every split reads the same files (each line goes to one of them)."""
  if splitter is None:
    if not isinstance(paths, Mapping):
      raise UserError(f"JSONL paths: expected a mapping of split name to file(s), e.g. {{'train': 'data.jsonl'}}, "
                      f"got {paths!r} (or give splits= to slice files into splits)")
    out = {s: _file_list(p) for s, p in paths.items()}
  else:
    if isinstance(paths, Mapping):
      if len(paths) != 1:
        raise UserError(f"JSONL paths: with splits= give the file(s) to slice (a path, a list or a one-entry mapping), "
                        f"not one entry per split ({', '.join(paths)})")
      (paths,) = paths.values()
    files = _file_list(paths)
    out = {s: files for s in splitter.names}
  for split, files in out.items():
    if not files:
      raise UserError(f"JSONL split {split!r} lists no files")
  return out


class JsonlSource(seqio.FunctionDataSource):
  """JSONL files per split, or files sliced into splits by ratio (`splits`), optionally with answer options.

  Each file is validated in full on first use (read or count), outside the tf graph. Examples carry the
  template fields, "answer", "options" (this example's options, none when the task has none) and "split".
  """

  def __init__(self, paths: PathsArg, fmt: str, *, on_error: str = "raise", max_chars: int | None = DEFAULT_MAX_CHARS,
               options: Sequence[str] | str | None = None, options_field: str | None = None,
               splits: Mapping[str, float] | None = None, group_key: splits_lib.GroupKey = None, split_seed: int = 0):
    _check_options(fmt, on_error)
    self.fmt, self.on_error, self.max_chars = fmt, on_error, max_chars
    self.options = check_options(options, options_field, fmt, "JSONL source")
    self.options_field = options_field
    self.splitter = splits_lib.Splitter(splits, split_seed) if splits is not None else None
    if group_key is not None and self.splitter is None:
      raise UserError("group_key: only applies when slicing files into splits (give splits= too)")
    splits_lib.check_group_key(group_key)
    self.group_key = group_key
    self.paths = _split_paths(paths, self.splitter)
    if self._uses_from_answers() and TRAIN_SPLIT not in self.paths:
      raise UserError(f"options={FROM_ANSWERS!r} takes the options from the {TRAIN_SPLIT!r} split's answers; there is "
                      f"no such split (splits: {', '.join(self.paths)})")
    self.reports: dict[str, Report] = {}  # path -> report, filled as files are validated
    self._keyers: dict[str, splits_lib.Keyer] = {}
    self._derived: dict[tuple[str, ...], tuple[str, ...]] = {}  # train files -> their distinct answers
    self._span_arrays: dict[tuple[str, int], np.ndarray] = {}  # (path, split index) -> its lines' byte spans
    self._validated: dict[str, tuple[int, int] | None] = {}  # path -> its size and time when validated
    self._changes: dict[str, str] = {}  # path -> the error of a file that changed after it was validated
    super().__init__(self._dataset_fn, splits=tuple(self.paths))

  @property
  def has_options(self) -> bool:
    """Whether examples carry answer options (rank classification; the `_zs_opt` variant)."""
    return self.options is not None or self.options_field is not None

  @property
  def skipped(self) -> dict[str, int]:
    """Skipped lines per reason over the files validated so far."""
    out: dict[str, int] = {}
    for r in self.reports.values():
      for reason, n in r.skipped.items():
        out[reason] = out.get(reason, 0) + n
    return out

  def _files(self, split: str) -> list[str]:
    if split not in self.paths:
      raise UserError(f"no JSONL files for split {split!r} (splits: {', '.join(self.paths)})")
    return self.paths[split]

  # Hooks for `itjax.data.pretemplated`: which options a file's lines get, and which files define derived ones.
  def _option_spec(self, path: str) -> tuple[str, ...] | str | None:
    del path
    return self.options

  def _uses_from_answers(self) -> bool:
    return self.options == FROM_ANSWERS

  def _derive_files(self, path: str) -> list[str]:
    del path
    return self._files(TRAIN_SPLIT)

  def _template_id(self, path: str) -> int | None:
    """The template a file's lines are rendered with (pre-templated files); None: templates are applied later."""
    del path
    return None

  def _interleaved(self) -> bool:
    """Whether a split's files are read in turns, one line each (templates of one dataset), not one after another."""
    return False

  def _keyer(self, path: str) -> splits_lib.Keyer | None:
    """The file's group key function (None without slicing); the "passage" rule learns its template text first."""
    if self.splitter is None:
      return None
    if path not in self._keyers:
      template = None
      if splits_lib.needs_sample(self.group_key):
        k = scan_cache.key("template_text", [path], self._scan_settings(None))
        stored = scan_cache.load(k)
        if stored is not None:
          template = splits_lib.TemplateText.from_json(stored)
        else:
          lines = _scan(path, self.fmt if self.fmt != "chat" else "chat_turns", on_error="skip",
                        max_chars=self.max_chars, check=lambda obj, ex: obj)
          template = splits_lib.template_text(itertools.islice(lines, splits_lib.SAMPLE_ROWS))
          lines.close()
          scan_cache.store(k, template.to_json())
      self._keyers[path] = splits_lib.keyer(self.group_key, template=template)
    return self._keyers[path]

  def _checker(self, path: str, options: tuple[str, ...] | None) -> Callable[[dict, Any], tuple[int, Any, tuple]]:
    """(obj, example) -> (split index, example, options): the line's split and answer options, checked."""
    keyer, splitter, field = self._keyer(path), self.splitter, self.options_field
    target = TARGET_FIELDS.get(self.fmt)
    what = ("one of the options taken from the train split's answers" if self._option_spec(path) == FROM_ANSWERS
            else "one of the task's options")

    def check(obj, ex):
      index = 0
      if keyer is not None:
        try:
          index = splitter.index(keyer(obj))
        except splits_lib.GroupKeyError as e:
          raise _BadLine(e.reason, e.field, e.message) from None
      opts: tuple[str, ...] = ()
      if field is not None:
        opts = _line_options(obj, field)
        _check_answer(ex["answer"], opts, field, "among this line's options")
      elif options is not None:
        opts = options
        _check_answer(ex["answer"], opts, target, what)
      return index, ex, opts

    return check

  def _parse_fmt(self) -> str:
    return "chat_turns" if self.fmt == "chat" else self.fmt

  def _split_index(self, split: str) -> int:
    return self.splitter.names.index(split) if self.splitter is not None else 0

  def options_of(self, path: str) -> tuple[str, ...] | None:
    """The answer options every line of `path` gets (None: none, or each line's own `options_field`).

    `FROM_ANSWERS` is resolved here: the sorted distinct (stripped) answers of the train split, read once;
    more than `MAX_DERIVED_OPTIONS` of them (or fewer than 2) is a UserError.
    """
    spec = self._option_spec(path)
    if spec != FROM_ANSWERS:
      return spec
    files = tuple(self._derive_files(path))
    if files not in self._derived:
      train = self._split_index(TRAIN_SPLIT)
      k = scan_cache.key("answers", files, self._scan_settings(None))
      stored = scan_cache.load(k)
      answers: set[str] = set(stored) if stored is not None else set()
      for f in files if stored is None else ():
        check = self._checker(f, None)
        for index, ex, _ in _scan(f, self._parse_fmt(), on_error=self.on_error, max_chars=self.max_chars,
                                  report=Report(f, self.fmt), check=check):
          if index == train:
            answers.add(ex["answer"].strip())
      if stored is None:
        scan_cache.store(k, sorted(answers))
      where = f"{', '.join(files)}: options={FROM_ANSWERS!r}"
      if len(answers) > MAX_DERIVED_OPTIONS:
        raise UserError(f"{where}: the {TRAIN_SPLIT} split has {len(answers)} distinct answers, more than "
                        f"{MAX_DERIVED_OPTIONS} (it is meant for class labels); give options=[...] or options_field=, "
                        "or no options")
      if len(answers) < 2:
        raise UserError(f"{where}: the {TRAIN_SPLIT} split has {len(answers)} distinct answer(s); rank "
                        "classification needs at least 2")
      self._derived[files] = tuple(sorted(answers))
    return self._derived[files]

  def validate_split(self, split: str) -> list[Report]:
    """Validates the split's files (once each): UserError on a bad line unless skipping."""
    for path in self._files(split):
      if path not in self.reports:
        options = self.options_of(path)
        k = scan_cache.key("report", [path], self._scan_settings(options))
        stored = scan_cache.load(k)
        self._validated[path] = _stat(path)  # what the scan cache keys on: the file as validated
        report = Report(**{**stored, "path": path}) if stored is not None else self._validate(path, options)
        if stored is None:
          scan_cache.store(k, dataclasses.asdict(report))
        self.reports[path] = report
        _log_skipped(report)
    return [self.reports[p] for p in self._files(split)]

  def _validate(self, path: str, options: tuple[str, ...] | None) -> Report:
    """Reads `path` in full: its report, with valid lines per split when sliced."""
    report = Report(path, self.fmt)
    found: list[list[tuple[int, int]]] = [[] for _ in (self.splitter.names if self.splitter is not None else [0])]
    for start, end, (index, _, _) in _scan(path, self._parse_fmt(), on_error=self.on_error, max_chars=self.max_chars,
                                           report=report, check=self._checker(path, options), spans=True):
      found[index].append((start, end))
    if self.splitter is not None:
      report.splits = dict(zip(self.splitter.names, map(len, found), strict=True))
    for index, spans in enumerate(found):  # where each split's lines are: `split_rows` reads them back by position
      self._store_spans(path, index, options, np.asarray(spans, np.int64).reshape(-1, 2))
    return report

  def _scan_settings(self, options: tuple[str, ...] | None) -> list | None:
    """What a scan's result depends on besides the files (`itjax.data.scan_cache`); None: not cacheable."""
    if callable(self.group_key):
      return None
    splitter = None if self.splitter is None else [self.splitter.names, self.splitter.bounds, self.splitter.seed]
    return [self.fmt, self.on_error, self.max_chars, self.options_field, splitter, self.group_key, options]

  def num_input_examples(self, split: str) -> int:
    reports = self.validate_split(split)
    if self.splitter is not None:
      return sum(r.splits[split] for r in reports)
    return sum(r.valid for r in reports)

  def rows(self, split: str, *, shuffle_files: bool = False, seed: int | None = None) -> Iterator[dict[str, Any]]:
    """The split's rows as Python values, in `split_rows` order; validates the split first, now: a UserError
    here reaches the user unwrapped."""
    rows = self.split_rows(split, shuffle_files=shuffle_files, seed=seed)

    def read():
      for start in range(0, len(rows), row_index.CHUNK):
        yield from rows.rows(np.arange(start, min(start + row_index.CHUNK, len(rows))))

    return read()

  def split_rows(self, split: str, *, shuffle_files: bool = False, seed: int | None = None) -> row_index.SplitRows:
    """The split's rows by position (`row_index.SplitRows`): files in turns for pre-templated sources, else one
    after another (in an order shuffled by `seed` with `shuffle_files`). Validates the split first."""
    self.validate_split(split)
    files = list(self._files(split))
    if shuffle_files and not self._interleaved():
      random.Random(seed).shuffle(files)
    fmt, max_chars, want = self._parse_fmt(), self.max_chars, self._split_index(split)
    options = {p: self.options_of(p) for p in files}  # resolved (and checked) now; the line checks when read
    template_ids = {p: self._template_id(p) for p in files}
    checks = {}

    def parse(path: str, raw: bytes) -> dict[str, Any]:
      if path not in checks:  # the "passage" rule samples the file: only once it is read
        checks[path] = self._checker(path, options[path])
      if _stat(path) != self._validated[path]:
        self._changed(path, options[path])
      try:
        index, ex, opts = _parse_line(raw[3:] if raw.startswith(_BOM) else raw, fmt, max_chars, checks[path])
      except _BadLine as e:
        index, ex, opts = -1, e, ()
      if index != want:  # validated and indexed above, so the file changed since
        raise UserError(f"{path}: a line no longer reads as it did when the file was validated ({ex}); "
                        "the file changed after it was validated")
      if fmt == "chat_turns":
        out = {"answer": ex[-1].content, chat.ROLES: [t.role for t in ex], chat.TEXTS: [t.content for t in ex]}
      else:
        out = dict(ex)
      out["options"] = list(opts)
      if template_ids[path] is not None:
        out[TEMPLATE_ID] = template_ids[path]
      return out

    spans = [self._spans(p, want, options[p]) for p in files]
    return row_index.SplitRows(files, spans, parse, order="turns" if self._interleaved() else "chain")

  def _changed(self, path: str, options: tuple[str, ...] | None) -> None:
    """Raises the UserError for a file that changed after it was validated: its first bad line if it has one
    (found once: a failed stream's threads may ask again before it stops)."""
    if path not in self._changes:
      self._changes[path] = f"{path}: the file changed after it was validated; restart to validate it again"
      try:
        for _ in _scan(path, self._parse_fmt(), on_error=self.on_error, max_chars=self.max_chars,
                       check=self._checker(path, options)):
          pass
      except UserError as e:
        self._changes[path] = f"{e} (the file changed after it was validated)"
    raise UserError(self._changes[path])

  def _spans_key(self, path: str, index: int, options: tuple[str, ...] | None) -> str | None:
    settings = self._scan_settings(options)
    return scan_cache.key("spans", [path], None if settings is None else [settings, index])

  def _store_spans(self, path: str, index: int, options: tuple[str, ...] | None, spans: np.ndarray) -> None:
    self._span_arrays[(path, index)] = spans
    scan_cache.store_array(self._spans_key(path, index, options), spans)

  def _spans(self, path: str, want: int, options: tuple[str, ...] | None) -> np.ndarray:
    """[k, 2] byte spans of the file's valid lines in split `want` (found by its validation, kept in the scan
    cache); a validation read from the cache without them scans the file again."""
    if (path, want) not in self._span_arrays:
      spans = scan_cache.load_array(self._spans_key(path, want, options))
      if spans is None:
        self._validate(path, options)
      else:
        self._span_arrays[(path, want)] = spans
    return self._span_arrays[(path, want)]

  @property
  def layout(self) -> RowLayout:
    """The features of this source's rows."""
    files = [p for paths in self.paths.values() for p in paths]
    return RowLayout(self._parse_fmt() == "chat_turns", any(self._template_id(p) is not None for p in files))

  def _dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    # Eagerly: a UserError here reaches the user unwrapped. Each epoch reads the same positions again.
    rows, layout = self.split_rows(split, shuffle_files=shuffle_files, seed=seed), self.layout
    fetch = lambda start, stop: layout.columns(rows.rows(np.arange(start, stop)))  # noqa: E731
    return row_examples(row_index.indexed_dataset(len(rows), fetch, layout.spec()), split)


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """The features of a JSONL source's rows: chat turns or template fields, with or without a template id."""

  chat: bool
  with_ids: bool

  @property
  def names(self) -> tuple[str, ...]:
    # Chat tasks take structured turns (itjax.data.chat), not template fields.
    base = ("answer", chat.ROLES, chat.TEXTS) if self.chat else (*FIELDS, "answer")
    return (*base, "options", *([TEMPLATE_ID] if self.with_ids else []))

  def spec(self) -> dict[str, tf.TensorSpec]:
    """One row's features (`columns` stacks rows along a first axis)."""
    spec = {k: tf.TensorSpec([], tf.string) for k in self.names}
    if self.chat:
      spec[chat.ROLES] = spec[chat.TEXTS] = tf.TensorSpec([None], tf.string)
    spec["options"] = tf.TensorSpec([None], tf.string)
    if self.with_ids:
      spec[TEMPLATE_ID] = tf.TensorSpec([], tf.int32)
    return spec

  def columns(self, chunk: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows as padded columns: turns and options padded with "" (no option is empty; dropped after unbatch)."""
    cols = {k: [r[k] for r in chunk] for k in self.names}
    for k in (chat.ROLES, chat.TEXTS, "options") if self.chat else ("options",):
      cols[k] = row_index.padded(cols[k])
    return cols


def row_examples(ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
  """Rows (`RowLayout.columns` unbatched) as a JSONL source yields them: the row's features, its options without
  padding, and "split"."""
  # Not autograph-converted (nothing here needs it): converting costs ~0.1 s per task at start-up.
  return ds.map(tf.autograph.experimental.do_not_convert(
      lambda ex: {**ex, "options": row_index.unpadded(ex["options"]), "split": tf.constant(split)}))


def jsonl_source(paths: PathsArg, fmt: str, *, on_error: str = "raise", max_chars: int | None = DEFAULT_MAX_CHARS,
                 options: Sequence[str] | str | None = None, options_field: str | None = None,
                 splits: Mapping[str, float] | None = None, group_key: splits_lib.GroupKey = None,
                 split_seed: int = 0) -> JsonlSource:
  """A seqio source over JSONL files per split (or files sliced by `splits`); registration reads nothing, the first
  use validates. See the module docstring for `options`, `options_field`, `splits` and `group_key`."""
  return JsonlSource(paths, fmt, on_error=on_error, max_chars=max_chars, options=options, options_field=options_field,
                     splits=splits, group_key=group_key, split_seed=split_seed)


def register_jsonl_task(name: str, paths: PathsArg, fmt: str, *, cluster: str | Sequence[str] = "instruction",
                        templates: Sequence[Template] | None = None, on_error: str = "raise",
                        max_chars: int | None = DEFAULT_MAX_CHARS, options: Sequence[str] | str | None = None,
                        options_field: str | None = None, splits: Mapping[str, float] | None = None,
                        group_key: splits_lib.GroupKey = None, split_seed: int = 0, **kwargs: Any) -> list[str]:
  """Registers `<name>_zs_noopt` (and `<name>_zs_opt` with answer options) over JSONL files; returns the task names.

  Templates default per format. `kwargs` go to `register_instruction_task` (vocabulary, metric_fns,
  shuffle_buffer_size, num_shots, truncation, metrics). Chat files become chat tasks (`itjax.data.chat`: loss on
  every assistant turn), which take no templates and no options.
  """
  source = jsonl_source(paths, fmt, on_error=on_error, max_chars=max_chars, options=options,
                        options_field=options_field, splits=splits, group_key=group_key, split_seed=split_seed)
  if fmt == "chat":
    if templates is not None:
      raise UserError(f"JSONL task {name!r}: chat tasks render their turns with role labels; templates do not apply "
                      "(leave templates unset)")
    unknown = set(kwargs) - {"vocabulary", "metric_fns", "shuffle_buffer_size"}
    if unknown:
      raise UserError(f"JSONL task {name!r}: chat tasks take no {', '.join(sorted(unknown))}")
    return chat.register_chat_task(name, cluster, source, **kwargs)
  return register_instruction_task(name, cluster, source, templates or DEFAULT_TEMPLATES[fmt], fields=FIELDS,
                                   has_options=source.has_options, **kwargs)
