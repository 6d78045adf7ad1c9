"""Slicing one set of examples into splits by ratio, deterministically and by group (pure Python).

A line belongs to split s when the hash bucket of its group key falls in s's range: ratios
{"train": 0.9, "validation": 0.05, "test": 0.05} give train [0, 0.9), validation [0.9, 0.95),
test [0.95, 1), in the order given. The bucket is a stable hash (BLAKE2b of the seed and the
normalized key, never Python's salted `hash()`), so a line lands in the same split on every run,
machine and host shard, and every line with the same key lands together: no group straddles
two splits. Split sizes follow the ratios in groups, so they are near the ratios in rows when
the groups are many and small.

Group keys (`group_key`), compared after lowercasing and collapsing whitespace:

- None: the line's whole JSON object (identical lines land together);
- a field name, e.g. "context": that field's value (any JSON value but null);
- a callable(obj: dict) -> str;
- "passage" (`PASSAGE`), for pre-templated prompts, where one passage is embedded with
  different wording by each template: the longest sentence of the line's text (every string in
  its JSON object: prompt and completion both, so that turned-around templates agree) that is
  not template text. Text is cut into lines and sentences, each lowercased, whitespace
  collapsed and stripped of a short leading label ("Review: ", "Product review: "). Template
  text is a sentence found in at least half of a file's first `SAMPLE_ROWS` lines (when it has
  at least `MIN_SAMPLE_ROWS`), e.g. the question a template asks every time. Rows of one passage
  under different templates, and different questions on one passage, then share a key. It
  fails where a template leaves the passage out (it then keys on what is left, e.g. ROPES'
  situation without its background). "passage" is the rule, not a field: group by a field
  called "passage" with `lambda obj: obj["passage"]`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from itjax.errors import UserError

PASSAGE = "passage"
RULES = (PASSAGE,)
SAMPLE_ROWS = 1000  # lines of a file sampled for template text
MIN_SAMPLE_ROWS = 8  # smaller files: no template text removed
TEMPLATE_SHARE = 0.5  # a sentence in at least this share of the sampled lines is template text
END_OF_TEXT = "<|endoftext|>"

GroupKey = str | Callable[[Mapping[str, Any]], str] | None
Keyer = Callable[[Mapping[str, Any]], str]

# Sentence ends (also before a closing quote or bracket), colons ("Review: ...", "... the following question: ..."),
# quotes next to a space ('the question "..." is in "..."') and dashes between words.
_PIECE_END = re.compile(r"(?:(?<=[.!?:])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+|\s+(?=[\"\u201c])|(?<=[\"\u201d])\s+"
                        r"|\s+-+\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")
_SPACE = re.compile(r"\s+")


class GroupKeyError(Exception):
  """A line whose group key cannot be taken: why (a skip reason), which field, what is wrong."""

  def __init__(self, reason: str, field: str | None, message: str):
    super().__init__(message)
    self.reason, self.field, self.message = reason, field, message


def check_ratios(splits: Mapping[str, float]) -> dict[str, float]:
  """The ratios as a dict, checked: non-empty split names, positive finite numbers summing to 1."""
  if not isinstance(splits, Mapping) or not splits:
    raise UserError(f"splits: expected a mapping of split name to ratio, e.g. {{'train': 0.9, 'test': 0.1}}, "
                    f"got {splits!r}")
  out = {}
  for name, r in splits.items():
    if not isinstance(name, str) or not name:
      raise UserError(f"splits: split names must be non-empty strings, got {name!r}")
    if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) or r <= 0:
      raise UserError(f"splits: ratio of {name!r} must be a positive number, got {r!r}")
    out[name] = float(r)
  total = sum(out.values())
  if abs(total - 1.0) > 1e-6:
    raise UserError(f"splits: ratios must sum to 1, got {total:g} ({', '.join(f'{k}={v:g}' for k, v in out.items())})")
  return out


def normalize(text: str) -> str:
  """Lowercased, whitespace collapsed, stripped."""
  return _SPACE.sub(" ", text).strip().lower()


def bucket(key: str, seed: int = 0) -> float:
  """A stable number in [0, 1) for `key` (BLAKE2b of seed and key)."""
  digest = hashlib.blake2b(f"{seed}\x1f{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
  return int.from_bytes(digest, "big") / 2.0**64


class Splitter:
  """Assigns group keys to splits by ratio: split i takes the keys whose bucket falls in its range."""

  def __init__(self, splits: Mapping[str, float], seed: int = 0):
    ratios = check_ratios(splits)
    self.names = tuple(ratios)
    self.seed = seed
    total, acc, bounds = sum(ratios.values()), 0.0, []
    for r in ratios.values():
      acc += r / total
      bounds.append(acc)
    bounds[-1] = 1.0
    self.bounds = tuple(bounds)

  def index(self, key: str) -> int:
    """The index in `names` of the split that `key` falls in."""
    u = bucket(key, self.seed)
    return next(i for i, b in enumerate(self.bounds) if u < b)

  def split_of(self, key: str) -> str:
    return self.names[self.index(key)]


# --- group keys -------------------------------------------------------------------------------------------------------
def check_group_key(group_key: GroupKey) -> None:
  """A UserError unless `group_key` is None, a non-empty field name / rule name, or a callable."""
  if group_key is None or callable(group_key):
    return
  if not isinstance(group_key, str) or not group_key:
    raise UserError(f"group_key: expected a field name, {' / '.join(repr(r) for r in RULES)} or a callable(obj) -> "
                    f"str, got {group_key!r}")


def needs_sample(group_key: GroupKey) -> bool:
  """Whether the key is learned from a sample of the file (the "passage" rule's template text)."""
  return group_key == PASSAGE


def keyer(group_key: GroupKey, sample: Iterable[Mapping[str, Any]] = (), template: TemplateText | None = None) -> Keyer:
  """obj -> its normalized group key; `sample` (the file's first lines) is read only by the "passage" rule, to
  learn the file's template text (or give it as `template`).

  A key that cannot be taken raises `GroupKeyError`.
  """
  check_group_key(group_key)
  if group_key is None:
    return lambda obj: normalize(json.dumps(obj, sort_keys=True, ensure_ascii=False))
  if group_key == PASSAGE:
    template = template if template is not None else template_text(sample)
    return lambda obj: passage_key(obj, template)
  if isinstance(group_key, str):
    return lambda obj: _field_key(obj, group_key)
  return lambda obj: _callable_key(obj, group_key)


def _field_key(obj: Mapping[str, Any], field: str) -> str:
  if obj.get(field) is None:
    what = "null" if field in obj else f"missing (fields present: {', '.join(sorted(obj)) or 'none'})"
    raise GroupKeyError("missing_field", field, f"{what}; it is the group_key of the split")
  v = obj[field]
  return normalize(v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False))


def _callable_key(obj: Mapping[str, Any], fn: Callable[[Mapping[str, Any]], str]) -> str:
  name = getattr(fn, "__name__", repr(fn))
  try:
    key = fn(obj)
  except Exception as e:  # noqa: BLE001 -- a user's function: any failure is this line's error
    raise GroupKeyError("bad_group_key", None, f"group_key {name} raised {type(e).__name__}: {e}") from None
  if not isinstance(key, str):
    raise GroupKeyError("bad_group_key", None, f"group_key {name} returned {type(key).__name__}, expected a string")
  return normalize(key)


# --- the "passage" rule -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TemplateText:
  """What a file's template contributes to every line: each field's common head and tail, frequent sentences."""

  affixes: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # field path -> (prefix, suffix)
  sentences: frozenset[str] = frozenset()

  def to_json(self) -> dict[str, Any]:
    return {"affixes": {k: list(v) for k, v in self.affixes.items()}, "sentences": sorted(self.sentences)}

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> TemplateText:
    return cls({k: tuple(v) for k, v in value["affixes"].items()}, frozenset(value["sentences"]))


def strings(obj: Any, path: str = "") -> list[tuple[str, str]]:
  """(path, text) of every string value in a JSON value, depth first in key order ("prompt", "messages[1].content")."""
  if isinstance(obj, str):
    return [(path, obj)]
  if isinstance(obj, Mapping):
    return [s for k in sorted(obj) for s in strings(obj[k], f"{path}.{k}" if path else str(k))]
  if isinstance(obj, list):
    return [s for i, v in enumerate(obj) for s in strings(v, f"{path}[{i}]")]
  return []


def sentences(text: str) -> list[str]:
  """The normalized pieces of `text`: its lines cut after sentence ends and colons and at dashes between words,
  each lowercased, whitespace collapsed, without leading and trailing punctuation (quotes, brackets)."""
  out = []
  for line in text.replace(END_OF_TEXT, "\n").splitlines():
    for s in _PIECE_END.split(line):
      s = _EDGE_PUNCT.sub("", normalize(s))
      if s:
        out.append(s)
  return out


def _strip_affix(text: str, affix: tuple[str, str] | None) -> str:
  if not affix:
    return text
  prefix, suffix = affix
  if len(text) < len(prefix) + len(suffix):
    return text
  return text[len(prefix):len(text) - len(suffix)]


def _object_sentences(obj: Mapping[str, Any], affixes: Mapping[str, tuple[str, str]]) -> set[str]:
  return {s for path, text in strings(obj) for s in sentences(_strip_affix(text, affixes.get(path)))}


def template_text(sample: Iterable[Mapping[str, Any]]) -> TemplateText:
  """The template text of a file from its first `SAMPLE_ROWS` objects (nothing below `MIN_SAMPLE_ROWS`):
  each field's longest common prefix and suffix (the template's head and tail, even where glued to the passage
  without a sentence end), then the sentences left in at least `TEMPLATE_SHARE` of the objects."""
  rows = []
  for obj in sample:
    rows.append(obj)
    if len(rows) == SAMPLE_ROWS:
      break
  if len(rows) < MIN_SAMPLE_ROWS:
    return TemplateText()
  by_path: dict[str, list[str]] = {}
  for obj in rows:
    for path, text in strings(obj):
      by_path.setdefault(path, []).append(text)
  affixes = {}
  for path, texts in by_path.items():
    if len(texts) >= MIN_SAMPLE_ROWS:
      prefix = os.path.commonprefix(texts)
      suffix = os.path.commonprefix([t[len(prefix):][::-1] for t in texts])[::-1]
      if prefix or suffix:
        affixes[path] = (prefix, suffix)
  counts: Counter[str] = Counter()
  for obj in rows:
    counts.update(_object_sentences(obj, affixes))
  return TemplateText(affixes, frozenset(s for s, n in counts.items() if n >= TEMPLATE_SHARE * len(rows)))


def passage_key(obj: Mapping[str, Any], template: TemplateText | None = None) -> str:
  """The longest sentence of the object's text that is not template text (ties: the first in sorted order).

  When every sentence is template text, all of them joined; "" for an object without text.
  """
  template = template or TemplateText()
  found = _object_sentences(obj, template.affixes)
  own = found - template.sentences
  if not own:
    found = _object_sentences(obj, {})
    return "\n".join(sorted(found))
  return min(own, key=lambda s: (-len(s), s))
