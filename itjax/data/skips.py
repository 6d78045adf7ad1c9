"""Counts of the source rows that documented filters skip, per dataset and reason.

A source filter (an unlabeled GLUE test row, a FLAN dataset's empty answer, a neutral Sentiment140
tweet) is a policy, not an accident: `counted_filter` applies it and counts every row it drops, so
that the training stream's summary (`itjax.data.stream_stats`) and `itjax tasks quality` can say
what was skipped. Counts are per process and cumulative over everything read (every split, every
pass); `skip_counts()` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import tensorflow as tf

_COUNTERS: dict[tuple[str, str], tf.Variable] = {}


def _counter(dataset: str, reason: str) -> tf.Variable:
  key = (dataset, reason)
  if key not in _COUNTERS:
    with tf.init_scope():  # a dataset may be built inside a traced function; the counter lives outside it
      _COUNTERS[key] = tf.Variable(0, dtype=tf.int64, trainable=False)
  return _COUNTERS[key]


def counted_filter(ds: tf.data.Dataset, predicate: Callable[[Mapping[str, tf.Tensor]], tf.Tensor], *,
                   dataset: str, reason: str) -> tf.data.Dataset:
  """`ds.filter(predicate)`, adding each dropped row to the (dataset, reason) count."""
  counter = _counter(dataset, reason)

  def keep(ex):
    k = tf.cast(predicate(ex), tf.bool)
    with tf.control_dependencies([counter.assign_add(tf.cast(tf.logical_not(k), tf.int64))]):
      return tf.identity(k)

  return ds.filter(keep)


def skip_counts() -> dict[str, dict[str, int]]:
  """{dataset: {reason: rows skipped}} for every counted filter that dropped something."""
  out: dict[str, dict[str, int]] = {}
  for (dataset, reason), v in sorted(_COUNTERS.items()):
    n = int(v.numpy())
    if n:
      out.setdefault(dataset, {})[reason] = n
  return out


def total(counts: Mapping[str, Mapping[str, int]]) -> int:
  return sum(n for reasons in counts.values() for n in reasons.values())
