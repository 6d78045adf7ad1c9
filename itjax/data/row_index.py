"""Rows addressed by position: datasets whose element i is a pure function of i, so a stream's state is a counter.

tf.data saves an iterator's state (`itjax.data.stream_state`) op by op: a range's counter, a shuffle's buffer, a
packer's carried rows. A Python generator has no such state, so a source read through one (`from_generator`)
cannot be restored. Sources here are read instead as `range(0, n, CHUNK)` mapped through a stateless numpy
function that returns rows [start, start + CHUNK): restoring the stream restores the counter, and the next chunk
is read from where the files say, not replayed.

`SplitRows` is that view of one split of line-oriented files: each file's rows as byte spans (found by one scan,
which `itjax.data.scan_cache` keeps), in the order the split reads them (files one after another, shuffled by a
seed, or in turns), read back by seeking. In small splits each row is parsed once, when first read, and kept.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

CHUNK = 256  # rows per numpy call: a call costs ~100 us, so amortize it
MEM_CACHE_ROWS = 10_000  # a split of at most this many rows is parsed once and kept in memory

Row = dict[str, Any]
Columns = Mapping[str, Any]


def indexed_dataset(n: int | None, fetch: Callable[[int, int], Columns], spec: Mapping[str, tf.TensorSpec],
                    chunk: int = CHUNK) -> tf.data.Dataset:
  """Elements 0..n-1 (n None: unbounded) of `fetch(start, stop)`, which returns the columns of rows [start, stop)
  with `spec`'s per-row shapes. `fetch` must be a pure function of its arguments: tf.data saves only the position."""
  starts = tf.data.Dataset.range(0, n if n is not None else 2**62, chunk)

  def rows(start):
    start = int(start)
    return fetch(start, start + chunk if n is None else min(start + chunk, n))

  call = tf.autograph.experimental.do_not_convert(lambda start: numpy_columns(rows, [start], spec))
  return starts.map(call).unbatch()


def numpy_columns(fn: Callable[..., Columns], args: Sequence[tf.Tensor], spec: Mapping[str, tf.TensorSpec]
                  ) -> dict[str, tf.Tensor]:
  """`fn(*args)` (numpy values in, the columns of some rows out, each row with `spec`'s shape) as tensors.
  `fn` must be pure: tf.data saves the positions that lead to it, not what it holds."""
  keys = sorted(spec)

  def py(*values):
    cols = fn(*values)
    return [strings(cols[k]) if spec[k].dtype == tf.string else np.asarray(cols[k], spec[k].dtype.as_numpy_dtype)
            for k in keys]

  # Marked stateful although pure: when a stateless numpy function raises, TensorFlow hangs at exit. Stateful
  # ops are "external state", which the iterator's save ignores (`stream_state.iterator_options`).
  out = tf.numpy_function(py, list(args), [spec[k].dtype for k in keys], stateful=True)
  return {k: tf.ensure_shape(v, [None, *spec[k].shape]) for k, v in zip(keys, out, strict=True)}


def padded(lists: Sequence[Sequence[str]]) -> list[list[str]] | np.ndarray:
  """Lists of strings padded with "" to one width, so that rows stack ([n, 0] when all are empty); for lists in
  which no real entry is empty (`unpadded` drops the padding again)."""
  width = max((len(x) for x in lists), default=0)
  if not width:
    return np.empty((len(lists), 0), object)
  return [list(x) + [""] * (width - len(x)) for x in lists]


def unpadded(values: tf.Tensor) -> tf.Tensor:
  """One row's `padded` list without its padding."""
  return tf.boolean_mask(values, tf.strings.length(values) > 0)


def strings(values: Any) -> np.ndarray:
  """A (possibly nested, rectangular) list of str/bytes as a numpy bytes array tf.string accepts."""
  arr = np.asarray(values, dtype=object)
  flat = [v.encode() if isinstance(v, str) else v for v in arr.reshape(-1)]
  out = np.empty(len(flat), dtype=object)
  out[:] = flat
  return out.reshape(arr.shape)


class SplitRows:
  """One split's rows over `files`, each a [k, 2] array of (start, end) byte spans, in read order.

  `parse(path, raw)` turns a line's bytes into a row (it raises if the line no longer parses); `order` is
  "chain" (files one after another, in the given order) or "turns" (line i of every file, then line i + 1).
  """

  def __init__(self, files: Sequence[str], spans: Sequence[np.ndarray], parse: Callable[[str, bytes], Row],
               order: str = "chain"):
    self.files, self.spans, self.parse = list(files), [np.asarray(s, np.int64).reshape(-1, 2) for s in spans], parse
    counts = np.array([len(s) for s in self.spans], np.int64)
    self.n = int(counts.sum())
    if order == "chain":
      self.file_of = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
      self.line_of = np.arange(self.n, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    elif order == "turns":  # sort (line, file) pairs: every file's line 0, then every file's line 1, ...
      file_of = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
      line_of = np.arange(self.n, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
      by = np.lexsort((file_of, line_of))
      self.file_of, self.line_of = file_of[by], line_of[by]
    else:
      raise ValueError(f"order must be chain or turns, got {order!r}")
    self._cache: list[Row | None] | None = None
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self.n

  def rows(self, positions: Sequence[int] | np.ndarray) -> list[Row]:
    """The rows at `positions` (in that order)."""
    positions = np.asarray(positions, np.int64)
    if self.n > MEM_CACHE_ROWS:
      return self._read(positions)
    with self._lock:  # a small split keeps each row once parsed (only the rows drawn: start-up reads no more)
      if self._cache is None:
        self._cache = [None] * self.n
      missing = np.unique([i for i in positions if self._cache[i] is None]).astype(np.int64)
      for i, row in zip(missing, self._read(missing), strict=True):
        self._cache[i] = row
      return [self._cache[i] for i in positions]

  def _read(self, positions: np.ndarray) -> list[Row]:
    out: list[Row | None] = [None] * len(positions)
    files = self.file_of[positions]
    for f in np.unique(files):
      at = np.nonzero(files == f)[0]
      path = self.files[f]
      spans = self.spans[f][self.line_of[positions[at]]]
      for i, raw in zip(at, read_spans(path, spans), strict=True):
        out[i] = self.parse(path, raw)
    return out  # type: ignore[return-value]


def read_spans(path: str, spans: np.ndarray) -> list[bytes]:
  """The bytes of `spans` ([k, 2] start, end) of a file, in order; local files by pread, others by seek."""
  if "://" not in path:
    fd = os.open(path, os.O_RDONLY)
    try:
      return [os.pread(fd, int(e - s), int(s)) for s, e in spans]
    finally:
      os.close(fd)
  with tf.io.gfile.GFile(path, "rb") as f:
    out = []
    for s, e in spans:
      f.seek(int(s))
      out.append(f.read(int(e - s)))
    return out
