"""One training stream for many JSONL tasks: rows drawn by position, rendered and tokenized once.

A mixture of a thousand tasks built as a thousand tf.data pipelines spends its start-up tracing and
starting them. Tasks whose rows come from a JSONL source (`itjax.data.jsonl`, pre-templated files
included) and whose preprocessing is a `SharedRendering` (zero-shot templates, pre-templated prompts)
followed by the closing `TokenizeAndCut` are served instead by one stream: each chunk of `DRAWS` examples
picks its tasks by the mixture's rates (a numpy generator seeded by the chunk's number), each task takes
its next rows in an order that is a fresh seeded permutation of its shard every epoch, and one rendering
serves them all; the mixture then tokenizes and cuts them once (`itjax.data.pipeline`). Building the
stream costs the files' validation (kept on disk by `itjax.data.scan_cache`) and a constant; a task's
rows are read (`itjax.data.row_index`) when it is first drawn.

The stream's whole state is the chunk number and how many rows each task has given: a tf.data `scan`
over chunk numbers carries the counts, and every row is a pure function of (task, count). Saving the
iterator (`itjax.data.stream_state`) saves those integers, so a resumed run continues at once wherever
it was. The rows, rendering, cuts and rates are those of the tasks' own pipelines; the random sequence
is this module's, not seqio's sampler's, and a task is shuffled by whole-epoch permutations rather than
by seqio's shuffle buffer. A host takes every `num_shards`-th row of each task, as seqio shards a
one-shard source.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import seqio
import tensorflow as tf

from itjax.data import row_index
from itjax.data import truncation as trunc
from itjax.data.jsonl import JsonlSource, row_examples
from itjax.data.tasks import TRAIN_SPLIT, SharedRendering

DRAWS = 1024  # examples drawn at a time: one chunk


def shared_key(task: seqio.Task) -> tuple | None:
  """Tasks with equal keys can share one stream; None: this task cannot (not JSONL, or other preprocessing)."""
  procs = task.preprocessors
  if (len(procs) != 2 or not isinstance(task.source, JsonlSource) or not isinstance(procs[0], SharedRendering)
      or trunc.tail(task) is None):
    return None
  return procs[0].shared_key, task.source.layout


def shard_size(n: int, shard_info: seqio.ShardInfo) -> int:
  """Rows of `n` in this host's shard: every `num_shards`-th, from `index`."""
  return len(range(shard_info.index, n, shard_info.num_shards))


class _Draws:
  """The pure functions behind the stream: which task each example of a chunk comes from, and its row."""

  def __init__(self, sources: Sequence[JsonlSource], rates: Sequence[float], *, seed: int,
               shard_info: seqio.ShardInfo):
    self.sources, self.seed, self.shard = list(sources), seed, shard_info
    self.sizes = np.array([shard_size(s.num_input_examples(TRAIN_SPLIT), shard_info) for s in sources], np.int64)
    p = np.where(self.sizes > 0, np.asarray(rates, np.float64), 0.0)  # an empty shard leaves the mixture
    self.p = p / p.sum() if p.sum() > 0 else p
    self.rows: list[row_index.SplitRows | None] = [None] * len(sources)
    self.perms: list[dict[int, np.ndarray]] = [{} for _ in sources]  # task -> epoch -> permutation of its shard

  def draw(self, counts: np.ndarray, chunk: np.int64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts after the chunk, the chunk's tasks, each draw's row count within its task)."""
    tasks = np.random.default_rng([self.seed, 7919, int(chunk)]).choice(len(self.p), size=DRAWS, p=self.p)
    order = np.argsort(tasks, kind="stable")
    ranked = tasks[order]
    rank = np.empty(DRAWS, np.int64)
    rank[order] = np.arange(DRAWS) - np.searchsorted(ranked, ranked, side="left")  # earlier draws of the same task
    return counts + np.bincount(tasks, minlength=len(self.p)), tasks.astype(np.int32), counts[tasks] + rank

  def fetch(self, tasks: np.ndarray, counts: np.ndarray) -> list[dict]:
    """The rows of draws (task, its count): epoch count // size, position in that epoch's permutation."""
    out: list[dict | None] = [None] * len(tasks)
    for k in np.unique(tasks):
      at = np.nonzero(tasks == k)[0]
      n = int(self.sizes[k])
      epochs, within = np.divmod(counts[at], n)
      positions = np.empty(len(at), np.int64)
      for e in np.unique(epochs):
        sel = epochs == e
        positions[sel] = self._permutation(int(k), int(e))[within[sel]]
      for i, row in zip(at, self._rows(int(k)).rows(positions * self.shard.num_shards + self.shard.index),
                        strict=True):
        out[i] = row
    return out  # type: ignore[return-value]

  def _permutation(self, k: int, epoch: int) -> np.ndarray:
    perms = self.perms[k]
    if epoch not in perms:
      for old in [e for e in perms if e < epoch - 1]:  # keep two epochs: a chunk may straddle them
        del perms[old]
      perms[epoch] = np.random.default_rng([self.seed, 104729, k, epoch]).permutation(int(self.sizes[k]))
    return perms[epoch]

  def _rows(self, k: int) -> row_index.SplitRows:
    if self.rows[k] is None:
      file_seed = int(np.random.default_rng([self.seed, 15485863, k]).integers(2**31))
      self.rows[k] = self.sources[k].split_rows(TRAIN_SPLIT, shuffle_files=True, seed=file_seed)
    return self.rows[k]


def text_stream(tasks: Sequence[seqio.Task], rates: Sequence[float], *, seed: int,
                shard_info: seqio.ShardInfo) -> tf.data.Dataset:
  """The infinite rendered training text of `tasks` (equal `shared_key`s) mixed by `rates`: inputs, targets, and
  `trunc.PIECES` when their policy cuts a field."""
  rendering: SharedRendering = tasks[0].preprocessors[0]
  keep = ("inputs", "targets", *(trunc.PIECES if trunc.cut_field(trunc.tail(tasks[0]).policy) else ()))
  sources = [t.source for t in tasks]
  for source in sources:
    source.validate_split(TRAIN_SPLIT)  # a bad file is a UserError now, not inside the stream
  draws, layout = _Draws(sources, rates, seed=seed, shard_info=shard_info), sources[0].layout

  @tf.autograph.experimental.do_not_convert
  def step(counts, chunk):
    new, which, js = tf.numpy_function(draws.draw, [counts, chunk], [tf.int64, tf.int32, tf.int64], stateful=True)
    return tf.ensure_shape(new, counts.shape), (tf.ensure_shape(which, [DRAWS]), tf.ensure_shape(js, [DRAWS]))

  spec = layout.spec()
  fetch = tf.autograph.experimental.do_not_convert(lambda which, js: row_index.numpy_columns(
      lambda w, j: layout.columns(draws.fetch(w, j)), [which, js], spec))

  chunks = tf.data.Dataset.range(2**62 if draws.p.sum() > 0 else 0)
  ds = chunks.scan(tf.zeros([len(sources)], tf.int64), step).map(fetch).unbatch()

  @tf.autograph.experimental.do_not_convert
  def render(ex):
    out = rendering.train_text(ex)
    return {k: out[k] for k in keep}

  return row_examples(ds, TRAIN_SPLIT).map(render, num_parallel_calls=tf.data.AUTOTUNE)
