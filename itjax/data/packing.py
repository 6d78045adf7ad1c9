"""Best-fit packing of variable-length examples into fixed-length rows, in tf.data with a numpy step.

seqio's packer fills one row at a time in stream order and starts a new row as soon as the next
example does not fit (next fit), so at the offline default (rows of 96 + 32 = 128 tokens, examples
of 15 to 105 tokens) about a quarter of every batch is padding. This packer takes the stream one
window of `window` examples at a time and places them, longest first, each into the row it fills
most tightly, opening a row only when none fits: best-fit decreasing over a bounded window, as in
Krell et al. 2021, "Efficient sequence packing without cross-contamination". Rows that no example
of the window's size could still enter are emitted; of the others, the fullest are emitted until
at most `max_open` remain, and the examples of those (least full) rows are carried into the next
window and packed again with it. An example carried `max_age - 1` times is emitted with its row,
so every example leaves within `max_age` windows of arriving.

The carried examples are `tf.data.Dataset.scan` state and each window is packed by a pure numpy
function, so every iterator packs on its own and the output is a deterministic function of the
input order: a stream's position stays a batch count. A finite stream ends with one final window
that emits everything still carried.

Rows have seqio's packed layout, so the feature converters and the models' packing masks work
unchanged: for every packed feature `k`, `k` (zero padded), `k_segment_ids` (1, 2, ... for the
examples in the row, 0 on padding) and `k_positions` (0, 1, ... within each example). Several
features (an encoder-decoder's inputs and targets) are packed jointly: an example enters a row
only if each of its features fits, and has the same segment id in all of them. Nothing is dropped
or reordered within an example; every example appears in exactly one row.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

DEFAULT_WINDOW = 512
DEFAULT_MAX_OPEN = 64
DEFAULT_MAX_AGE = 8
_SIZES = "_packing_sizes"
_AGES = "_packing_ages"
_FINAL = "_packing_final"


class PackingStats:
  """Examples packed, rows emitted, real tokens and row capacity: the packer's efficiency, as it streams."""

  def __init__(self) -> None:
    self.examples = 0
    self.rows = 0
    self.tokens = 0
    self.capacity = 0

  @property
  def efficiency(self) -> float:
    """Non-padding fraction of the emitted rows (all packed features together)."""
    return self.tokens / self.capacity if self.capacity else 0.0


def best_fit(sizes: np.ndarray, ages: np.ndarray, cap: np.ndarray, *, final: bool = False,
             max_open: int = DEFAULT_MAX_OPEN, max_age: int = DEFAULT_MAX_AGE) -> tuple[list[list[int]], list[int]]:
  """Places examples ([n, features] sizes, each within `cap`) into rows: (rows to emit, examples to carry).

  Each emitted row lists its examples' indices in placement order. `ages` counts how many windows
  each example has already been carried; `final` emits every row.
  """
  sizes = np.minimum(np.asarray(sizes, np.int64), cap)
  n = len(sizes)
  if not n:
    return [], []
  # Longest first (by fraction of the row), ties in stream order: deterministic.
  order = np.lexsort((np.arange(n), -(sizes / cap).sum(1)))
  free = np.zeros((n, len(cap)), np.int64)
  # The tightest fit minimizes the free fraction left, sum_k (free_k - size_k) / cap_k: the same row
  # minimizes sum_k free_k / cap_k (`slack`), which changes only where an example lands.
  slack = np.zeros(n)
  single = len(cap) == 1
  members: list[list[int]] = []
  for i in order:
    s = sizes[i]
    count = len(members)
    if count:
      fits = free[:count, 0] >= s[0] if single else (free[:count] >= s).all(1)
      if fits.any():
        j = int(np.argmin(np.where(fits, slack[:count], np.inf)))  # ties go to the first row opened
        free[j] -= s
        slack[j] = (free[j] / cap).sum()
        members[j].append(int(i))
        continue
    free[count] = cap - s
    slack[count] = (free[count] / cap).sum()
    members.append([int(i)])
  free = free[:len(members)]
  if final:
    return members, []
  # Emit the rows that not even the smallest example here could still enter and those holding an example
  # carried too long, then the fullest rows beyond max_open; carry the examples of the rest.
  old = np.asarray(ages) >= max_age - 1
  close = (free < sizes.min(0)).any(1) | np.array([old[m].any() for m in members])
  still_open = np.nonzero(~close)[0]
  if len(still_open) > max_open:
    fullness = (free[still_open] / cap).sum(1)
    close[still_open[np.lexsort((still_open, fullness))][:len(still_open) - max_open]] = True
  emit = [m for m, c in zip(members, close, strict=True) if c]
  carry = sorted(i for m, c in zip(members, close, strict=True) if not c for i in m)
  return emit, carry


def assemble(rows: Sequence[Sequence[int]], values: Sequence[np.ndarray], sizes: np.ndarray
             ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """seqio's packed layout per feature: (values, segment ids, positions), [len(rows), length], zero padded."""
  out = []
  for f, v in enumerate(values):
    length = v.shape[1]
    vals, segs, pos = (np.zeros((len(rows), length), np.int32) for _ in range(3))
    for r, members in enumerate(rows):
      at = 0
      for seg, i in enumerate(members, start=1):
        size = int(min(sizes[i][f], length))
        vals[r, at:at + size] = v[i, :size]
        segs[r, at:at + size] = seg
        pos[r, at:at + size] = np.arange(size)
        at += size
    out.append((vals, segs, pos))
  return out


def _pack_window(sizes, ages, final, *values, cap, max_open, max_age, stats):
  """The numpy step of `pack_dataset`: packed rows per feature, then the indices of the examples to carry."""
  rows, carry = best_fit(sizes, ages, cap, final=bool(final), max_open=max_open, max_age=max_age)
  packed = assemble(rows, values, sizes)
  if stats is not None:
    stats.examples += sum(len(r) for r in rows)
    stats.rows += len(rows)
    stats.tokens += int(sum(np.sum(s > 0) for _, s, _ in packed))
    stats.capacity += len(rows) * int(cap.sum())
  return [a for triple in packed for a in triple] + [np.asarray(carry, np.int64)]


def pack_dataset(ds: tf.data.Dataset, lengths: Mapping[str, int], *, window: int = DEFAULT_WINDOW,
                 max_open: int = DEFAULT_MAX_OPEN, max_age: int = DEFAULT_MAX_AGE,
                 stats: PackingStats | None = None) -> tf.data.Dataset:
  """`ds` packed into rows of `lengths` (a drop-in for `seqio.utils.trim_and_pack_dataset`).

  Features are trimmed to their length first (as seqio does); features not in `lengths` are
  removed.
  """
  keys = list(lengths)
  if not keys or min(lengths.values()) < 1:
    raise ValueError(f"packed lengths must be positive, got {dict(lengths)}")
  for k in keys:
    if k not in ds.element_spec:
      raise ValueError(f"feature {k!r} to pack is not in the dataset (features: {sorted(ds.element_spec)})")
    if not ds.element_spec[k].shape.is_compatible_with([None]):
      raise ValueError(f"packed features must be one-dimensional; {k!r} has shape {ds.element_spec[k].shape}")
  cap = np.array([lengths[k] for k in keys], np.int64)

  def trim(ex):
    out = {k: tf.cast(ex[k][:lengths[k]], tf.int32) for k in keys}
    out[_SIZES] = tf.stack([tf.size(out[k]) for k in keys])
    return out

  padded = {k: [lengths[k]] for k in keys}
  padded[_SIZES] = [len(keys)]
  empty = {k: tf.zeros([0, lengths[k]], tf.int32) for k in keys}
  empty[_SIZES] = tf.zeros([0, len(keys)], tf.int32)
  windows = ds.map(trim, num_parallel_calls=tf.data.AUTOTUNE).padded_batch(window, padded_shapes=padded)
  windows = windows.map(lambda w: {**w, _FINAL: False}).concatenate(
      tf.data.Dataset.from_tensors({**empty, _FINAL: True}))  # reached only by a finite stream
  pack = functools.partial(_pack_window, cap=cap, max_open=max_open, max_age=max_age, stats=stats)

  def step(carried, w):
    ex = {k: tf.concat([carried[k], w[k]], 0) for k in (*keys, _SIZES)}
    ages = tf.concat([carried[_AGES] + 1, tf.zeros([tf.shape(w[_SIZES])[0]], tf.int32)], 0)
    out = tf.numpy_function(pack, [ex[_SIZES], ages, w[_FINAL], *(ex[k] for k in keys)],
                            [tf.int32] * (3 * len(keys)) + [tf.int64], stateful=stats is not None)
    rows = {}
    for f, k in enumerate(keys):
      for j, suffix in enumerate(("", "_segment_ids", "_positions")):
        rows[k + suffix] = tf.ensure_shape(out[3 * f + j], [None, lengths[k]])
    carry = tf.ensure_shape(out[-1], [None])
    new = {k: tf.gather(ex[k], carry) for k in (*keys, _SIZES)}
    new[_AGES] = tf.gather(ages, carry)
    return new, rows

  return windows.scan({**empty, _AGES: tf.zeros([0], tf.int32)}, step).unbatch()
