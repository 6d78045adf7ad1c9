"""Counts of the source rows that documented filters skip, per dataset and reason.

A source filter (an unlabeled GLUE test row, a FLAN dataset's empty answer, a neutral Sentiment140
tweet) is a policy, not an accident: `counted_filter` applies it and counts every row it drops, so
that the training stream's summary (`itjax.data.stream_stats`) and `itjax tasks quality` can say
what was skipped. The counters belong to the dataset: one `SkipCounts` is created when its tasks
are registered, handed to its filters and kept on each of its tasks (`InstructionTask.skips`), so
nothing is kept at module level and a re-registered dataset starts from its own counters. Counts
are per process and cumulative over everything read (every split, every pass, every variant of the
dataset); `skip_counts(tasks)` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import seqio
import tensorflow as tf


class SkipCounts:
  """One dataset's counters of the source rows its filters dropped, per reason."""

  def __init__(self, dataset: str) -> None:
    self.dataset = dataset
    self._counters: dict[str, tf.Variable] = {}

  def counter(self, reason: str) -> tf.Variable:
    """The int64 counter of `reason`, created on first use."""
    if reason not in self._counters:
      with tf.init_scope():  # a dataset may be built inside a traced function; the counter lives outside it
        self._counters[reason] = tf.Variable(0, dtype=tf.int64, trainable=False)
    return self._counters[reason]

  def as_dict(self) -> dict[str, int]:
    """{reason: rows skipped} for every reason that dropped something."""
    return {reason: n for reason, v in sorted(self._counters.items()) if (n := int(v.numpy()))}

  def __repr__(self) -> str:
    return f"SkipCounts({self.dataset!r}, {self.as_dict()})"


def counted_filter(ds: tf.data.Dataset, predicate: Callable[[Mapping[str, tf.Tensor]], tf.Tensor], *,
                   counts: SkipCounts, reason: str) -> tf.data.Dataset:
  """`ds.filter(predicate)`, adding each dropped row to `counts` under `reason`."""
  counter = counts.counter(reason)

  def keep(ex):
    k = tf.cast(predicate(ex), tf.bool)
    with tf.control_dependencies([counter.assign_add(tf.cast(tf.logical_not(k), tf.int64))]):
      return tf.identity(k)

  return ds.filter(keep)


def skip_counts(tasks: Iterable[seqio.Task]) -> dict[str, dict[str, int]]:
  """{dataset: {reason: rows skipped}} over the counters of `tasks` (those that carry `skips`).

  A dataset's variants share one `SkipCounts`, counted once; tasks without counters (plain seqio
  tasks) add nothing.
  """
  seen: dict[int, SkipCounts] = {}
  for task in tasks:
    counts = getattr(task, "skips", None)
    if isinstance(counts, SkipCounts):
      seen.setdefault(id(counts), counts)
  out: dict[str, dict[str, int]] = {}
  for counts in seen.values():
    for reason, n in counts.as_dict().items():
      reasons = out.setdefault(counts.dataset, {})
      reasons[reason] = reasons.get(reason, 0) + n
  return {dataset: dict(sorted(reasons.items())) for dataset, reasons in sorted(out.items())}


def total(counts: Mapping[str, Mapping[str, int]]) -> int:
  return sum(n for reasons in counts.values() for n in reasons.values())
