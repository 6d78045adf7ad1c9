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

Validation runs eagerly, in Python, the first time a split is read (or counted):
errors raised inside a `tf.data` generator would reach the user wrapped in a
TensorFlow error, so by the time the generator runs the file is known good.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import seqio
import tensorflow as tf

from itjax.data import chat
from itjax.data.tasks import register_instruction_task
from itjax.data.templates import Template
from itjax.errors import UserError

logger = logging.getLogger("itjax")

FORMATS = ("alpaca", "dolly", "chat", "prompt_completion")
ON_ERROR = ("raise", "skip")
DEFAULT_MAX_CHARS = 65_536
END_OF_TEXT = "<|endoftext|>"
CHUNK = 256  # rows per generator call

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


def _parse_line(raw: bytes, fmt: str, max_chars: int | None) -> dict[str, str] | Turn | list[Turn]:
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
  if fmt == "chat_turns":
    return _turns(obj, max_chars)
  return _PARSERS[fmt](obj, max_chars)


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


def _check_options(fmt: str, on_error: str) -> None:
  if fmt not in FORMATS:
    close = difflib.get_close_matches(fmt, FORMATS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown JSONL format {fmt!r} (choose from {', '.join(FORMATS)}){hint}")
  if on_error not in ON_ERROR:
    raise UserError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")


def _scan(path: str, fmt: str, *, on_error: str, max_chars: int | None, report: Report | None = None
          ) -> Iterator[Any]:
  """Parsed examples of `path`; bad lines raise UserError or are counted in `report` (skip policy)."""
  report = report if report is not None else Report(str(path), fmt)
  with _open(str(path)) as f:
    for lineno, raw in enumerate(f, start=1):
      if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark
      if not raw.strip():
        report.blank += 1
        continue
      try:
        ex = _parse_line(raw, fmt, max_chars)
      except _BadLine as e:
        msg = e.located(str(path), lineno)
        if on_error == "raise":
          raise UserError(msg) from None
        report.skipped[e.reason] = report.skipped.get(e.reason, 0) + 1
        report.first_error.setdefault(e.reason, msg)
        continue
      report.valid += 1
      yield ex


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


# --- seqio source -----------------------------------------------------------------------------------------------------
class JsonlSource(seqio.FunctionDataSource):
  """JSONL files per split. Each file is validated in full on first use (read or count), outside the tf graph."""

  def __init__(self, paths: Mapping[str, Sequence[str | os.PathLike] | str | os.PathLike], fmt: str, *,
               on_error: str = "raise", max_chars: int | None = DEFAULT_MAX_CHARS):
    _check_options(fmt, on_error)
    self.fmt, self.on_error, self.max_chars = fmt, on_error, max_chars
    self.paths = {s: [os.fspath(p)] if isinstance(p, str | os.PathLike) else [os.fspath(x) for x in p]
                  for s, p in paths.items()}
    for split, files in self.paths.items():
      if not files:
        raise UserError(f"JSONL split {split!r} lists no files")
    self.reports: dict[str, Report] = {}  # path -> report, filled as files are validated
    super().__init__(self._dataset_fn, splits=tuple(self.paths))

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

  def validate_split(self, split: str) -> list[Report]:
    """Validates the split's files (once each): UserError on a bad line unless skipping."""
    for path in self._files(split):
      if path not in self.reports:
        report = Report(path, self.fmt)
        for _ in _scan(path, self.fmt, on_error=self.on_error, max_chars=self.max_chars, report=report):
          pass
        self.reports[path] = report
        _log_skipped(report)
    return [self.reports[p] for p in self._files(split)]

  def num_input_examples(self, split: str) -> int:
    return sum(r.valid for r in self.validate_split(split))

  def _dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    self.validate_split(split)  # eagerly: a UserError here reaches the user unwrapped
    files = list(self._files(split))
    if shuffle_files:
      random.Random(seed).shuffle(files)
    fmt, on_error, max_chars = self.fmt, self.on_error, self.max_chars
    if fmt == "chat":  # structured turns for chat tasks (itjax.data.chat), not template fields
      fmt, names = "chat_turns", ("answer", chat.ROLES, chat.TEXTS)
    else:
      names = (*FIELDS, "answer")

    def row(ex):
      if fmt != "chat_turns":
        return ex
      return {"answer": ex[-1].content, chat.ROLES: [t.role for t in ex], chat.TEXTS: [t.content for t in ex]}

    def chunks():  # columns of CHUNK rows: from_generator costs per element, so amortize it
      cols = {k: [] for k in names}
      for path in files:
        try:
          for ex in _scan(path, fmt, on_error=on_error, max_chars=max_chars):
            for k, v in row(ex).items():
              cols[k].append(v)
            if len(cols["answer"]) == CHUNK:
              yield cols
              cols = {k: [] for k in names}
        except UserError as e:  # validated above, so the file changed since
          raise UserError(f"{e} (the file changed after it was validated)") from None
      if cols["answer"]:
        yield cols

    def columns():  # + "options": no answer options, shaped [rows, 0] so that unbatch gives [None] like other sources
      for cols in chunks():
        if fmt == "chat_turns":  # turns padded with "" to the chunk's longest conversation
          width = max(len(t) for t in cols[chat.ROLES])
          for k in (chat.ROLES, chat.TEXTS):
            cols[k] = [t + [""] * (width - len(t)) for t in cols[k]]
        yield {**cols, "options": np.empty((len(cols["answer"]), 0), np.bytes_)}

    spec = {k: tf.TensorSpec([None], tf.string) for k in names}
    if fmt == "chat_turns":
      spec[chat.ROLES] = spec[chat.TEXTS] = tf.TensorSpec([None, None], tf.string)
    spec["options"] = tf.TensorSpec([None, None], tf.string)
    ds = tf.data.Dataset.from_generator(columns, output_signature=spec).unbatch()
    return ds.map(lambda ex: {**ex, "split": tf.constant(split)})


def jsonl_source(paths: Mapping[str, Sequence[str | os.PathLike] | str | os.PathLike], fmt: str, *,
                 on_error: str = "raise", max_chars: int | None = DEFAULT_MAX_CHARS) -> JsonlSource:
  """A seqio source over JSONL files per split; registration reads nothing, the first use validates."""
  return JsonlSource(paths, fmt, on_error=on_error, max_chars=max_chars)


def register_jsonl_task(name: str, paths: Mapping[str, Sequence[str | os.PathLike] | str | os.PathLike], fmt: str, *,
                        cluster: str | Sequence[str] = "instruction", templates: Sequence[Template] | None = None,
                        on_error: str = "raise", max_chars: int | None = DEFAULT_MAX_CHARS,
                        **kwargs: Any) -> list[str]:
  """Registers `<name>_zs_noopt` over JSONL files (default templates per format); returns the task names.

  `kwargs` go to `register_instruction_task` (vocabulary, metric_fns, shuffle_buffer_size). Chat
  files become chat tasks (`itjax.data.chat`: loss on every assistant turn), which take no templates.
  """
  source = jsonl_source(paths, fmt, on_error=on_error, max_chars=max_chars)
  if fmt == "chat":
    if templates is not None:
      raise UserError(f"JSONL task {name!r}: chat tasks render their turns with role labels; templates do not apply "
                      "(leave templates unset)")
    unknown = set(kwargs) - {"vocabulary", "metric_fns", "shuffle_buffer_size"}
    if unknown:
      raise UserError(f"JSONL task {name!r}: chat tasks take no {', '.join(sorted(unknown))}")
    return chat.register_chat_task(name, cluster, source, **kwargs)
  return register_instruction_task(name, cluster, source, templates or DEFAULT_TEMPLATES[fmt], fields=FIELDS,
                                   has_options=False, **kwargs)
