"""What scanning a JSONL file found, kept on disk, so that a restart, an evaluation or the next run of a large
mixture does not read every file again before its first step.

A JSONL source validates each file in full on first use (`itjax.data.jsonl`): valid lines per split, skips per
reason, the answers `options="from_answers"` derives. Those results are stored under a key made of what they
depend on: each file's absolute path, size and modification time, and the source's settings (format, error
policy, options, split ratios, group key). A changed file or setting is a new key, so it is scanned again;
the lines themselves are still checked when they are read, so a file rewritten in place with the same size
and time is caught there ("the file changed after it was validated").

Where: `$ITJAX_SCAN_CACHE`, default `~/.cache/itjax/jsonl_scans`; `ITJAX_SCAN_CACHE=off` turns it off.
Files on remote file systems (`gs://...`) and sources with a callable `group_key` are never cached. A
directory that cannot be written only costs the rescans.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger("itjax")
ENV = "ITJAX_SCAN_CACHE"
OFF = "off"
VERSION = 1  # bump when what a scan computes changes


def directory() -> str | None:
  """The cache directory, or None when turned off."""
  value = os.environ.get(ENV, "")
  if value.lower() == OFF:
    return None
  return value or os.path.join(os.path.expanduser("~"), ".cache", "itjax", "jsonl_scans")


def key(kind: str, paths: Sequence[str], settings: Any) -> str | None:
  """The key of a scan of `paths` with `settings` (JSON-able; None: not cacheable), or None when it cannot be cached."""
  if settings is None or directory() is None or any("://" in p for p in paths):
    return None
  files = []
  for p in paths:
    try:
      st = os.stat(p)
    except OSError:
      return None  # the scan itself reports the missing file
    files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
  blob = json.dumps([VERSION, kind, files, settings], sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(blob.encode()).hexdigest()


def _read(k: str | None, suffix: str, read: Callable[[str], Any]) -> Any | None:
  root = directory()
  if k is None or root is None:
    return None
  try:
    return read(os.path.join(root, k + suffix))
  except (OSError, ValueError):
    return None


def _write(k: str | None, suffix: str, write: Callable[[BinaryIO], None]) -> None:
  """Writes `k + suffix` atomically (concurrent hosts and runs may write the same key)."""
  root = directory()
  if k is None or root is None:
    return
  try:
    os.makedirs(root, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, os.path.join(root, k + suffix))
  except OSError as e:
    log.debug("scan cache: could not write %s: %s", root, e)


def _load_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load(k: str | None) -> Any | None:
  """The stored value of key `k` (None: none stored, or unreadable)."""
  return _read(k, ".json", _load_json)


def store(k: str | None, value: Any) -> None:
  """Stores `value` (JSON-able) under `k`, atomically."""
  _write(k, ".json", lambda f: f.write(json.dumps(value, ensure_ascii=False).encode("utf-8")))


def load_array(k: str | None) -> np.ndarray | None:
  """The numpy array stored under key `k` (None: none stored, or unreadable)."""
  return _read(k, ".npy", lambda path: np.load(path, allow_pickle=False))


def store_array(k: str | None, value: np.ndarray) -> None:
  """Stores a numpy array under `k`, atomically."""
  _write(k, ".npy", lambda f: np.save(f, np.asarray(value), allow_pickle=False))
