"""One training stream for many JSONL tasks: rows sampled in Python, rendered and tokenized once.

A mixture of a thousand tasks built as a thousand tf.data pipelines spends its start-up tracing and
starting them. Tasks whose rows come from a JSONL source (`itjax.data.jsonl`, pre-templated files
included) and whose preprocessing is a `SharedRendering` (zero-shot templates, pre-templated prompts)
followed by the closing `TokenizeAndCut` are served instead by one Python generator: it picks each
example's task by the mixture's rates, takes the task's next row through the task's own shuffle buffer
(as `tf.data.Dataset.shuffle` does, with the same size), and hands the rows to one rendering; the
mixture then tokenizes and cuts them once (`itjax.data.pipeline`). Building the stream costs the
files' validation (kept on disk by `itjax.data.scan_cache`) and a constant; a task's files are opened
when it is first drawn.

The rows, rendering, cuts and rates are those of the tasks' own pipelines; the random sequence is this
module's, not seqio's sampler's. Deterministic given the seed and the host's shard (a host takes every
`num_shards`-th row of each task, as seqio shards a one-shard source), so a resumed run that skips the
batches it trained sees exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from itjax.data import truncation as trunc
from itjax.data.jsonl import JsonlSource, row_dataset
from itjax.data.tasks import TRAIN_SPLIT, SharedRendering

# A task's train rows below this many (seqio's in-memory cache limit) are read once and kept in memory.
MEM_CACHE_ROWS = 10_000
DRAWS = 1024  # task choices drawn at a time


def shared_key(task: seqio.Task) -> tuple | None:
  """Tasks with equal keys can share one stream; None: this task cannot (not JSONL, or other preprocessing)."""
  procs = task.preprocessors
  if (len(procs) != 2 or not isinstance(task.source, JsonlSource) or not isinstance(procs[0], SharedRendering)
      or trunc.tail(task) is None):
    return None
  return procs[0].shared_key, task.source.layout


class _TaskRows:
  """One task's infinite train rows of this host's shard, through a shuffle buffer of `buffer` rows."""

  def __init__(self, source: JsonlSource, *, buffer: int | None, seed: str, shard_info: seqio.ShardInfo):
    self.source, self.shard = source, shard_info
    self.buffer = max(1, buffer or 1)
    self.rng = random.Random(seed)  # seeded by a string: the same draws in every process
    self.file_seed = self.rng.randrange(2**31)
    self.rows = self._epochs()
    self.pool: list[dict[str, Any]] = []

  def _epoch(self) -> Iterator[dict[str, Any]]:
    rows = self.source.rows(TRAIN_SPLIT, shuffle_files=True, seed=self.file_seed)
    return itertools.islice(rows, self.shard.index, None, self.shard.num_shards)

  def _epochs(self) -> Iterator[dict[str, Any]]:
    kept: list[dict[str, Any]] | None = []  # the first epoch's rows, while few enough to keep
    for row in self._epoch():
      if kept is not None:
        kept.append(row)
        if len(kept) > MEM_CACHE_ROWS:
          kept = None
      yield row
    if kept is not None:  # an empty shard ends here: the task leaves the mixture (tf.data's sampler skips it too)
      while kept:
        yield from kept
      return
    while True:  # a large task: its files are read every epoch
      yield from self._epoch()

  def next(self) -> dict[str, Any] | None:
    """The next row (None once the task has no rows)."""
    while len(self.pool) < self.buffer:
      row = next(self.rows, None)
      if row is None:
        break
      self.pool.append(row)
    if not self.pool:
      return None
    i = self.rng.randrange(len(self.pool))
    row = self.pool[i]
    refill = next(self.rows, None)
    if refill is None:
      self.pool[i] = self.pool[-1]
      self.pool.pop()
    else:
      self.pool[i] = refill
    return row


def _sampled_rows(sources: Sequence[JsonlSource], rates: Sequence[float], buffers: Sequence[int | None], *,
                  seed: int, shard_info: seqio.ShardInfo) -> Iterator[dict[str, Any]]:
  """Rows of the tasks, each drawn by `rates`; tasks start reading their files when first drawn."""
  tasks: list[_TaskRows | None] = [None] * len(sources)
  p = np.asarray(rates, np.float64)
  rng = np.random.default_rng([seed, 7919])
  while p.sum() > 0:
    for k in rng.choice(len(p), size=DRAWS, p=p / p.sum()):
      if p[k] == 0:
        continue  # left the mixture after these choices were drawn
      if tasks[k] is None:
        tasks[k] = _TaskRows(sources[k], buffer=buffers[k], seed=f"itjax:{seed}:{k}", shard_info=shard_info)
      row = tasks[k].next()
      if row is None:
        p[k] = 0
        continue
      yield row


def text_stream(tasks: Sequence[seqio.Task], rates: Sequence[float], buffers: Sequence[int | None], *, seed: int,
                shard_info: seqio.ShardInfo) -> tf.data.Dataset:
  """The infinite rendered training text of `tasks` (equal `shared_key`s) mixed by `rates`: inputs, targets, and
  `trunc.PIECES` when their policy cuts a field."""
  rendering: SharedRendering = tasks[0].preprocessors[0]
  keep = ("inputs", "targets", *(trunc.PIECES if trunc.cut_field(trunc.tail(tasks[0]).policy) else ()))
  sources = [t.source for t in tasks]
  for source in sources:
    source.validate_split(TRAIN_SPLIT)  # a bad file is a UserError now, not inside the stream
  ds = row_dataset(lambda: _sampled_rows(sources, rates, buffers, seed=seed, shard_info=shard_info),
                   sources[0].layout, TRAIN_SPLIT)

  @tf.autograph.experimental.do_not_convert
  def render(ex):
    out = rendering.train_text(ex)
    return {k: out[k] for k in keep}

  return ds.map(render, num_parallel_calls=tf.data.AUTOTUNE)
