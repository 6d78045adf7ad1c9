"""A training stream's position as data: each data shard's tf.data iterator state, saved with the model.

The mechanism is T5X's: tf.data saves an iterator op by op (a range's counter, a shuffle's buffer, the
mixture sampler's random state, the packer's carried rows, the batches already prefetched), so restoring
costs the size of that state, never the position, and the next batch is exactly the one an
uninterrupted run would have read. It needs every stateful step of the stream to be a tf.data op: the
sources are read by position (`itjax.data.row_index`), and the one Python-side state, deduplication's
Bloom filters, is saved next to the iterator (`itjax.data.dedup`). This was chosen over a Grain-style
rewrite because it keeps seqio's preprocessors, few-shot and sampling exactly as they are.

A `ShardStream` is one data shard's batches as numpy; `HostStream` concatenates this host's shards. Their
`state()` is a dict of named blobs (one per shard, one for the counts of the process) that
`itjax.core.checkpoints` stores in the step's `data/` item, written by every process for its own shards,
inside the same atomic Orbax save as model and optimizer.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from itjax.data.stream_stats import StreamStats
from itjax.errors import UserError

_FAILED: list = []  # iterators of failed streams, kept until exit (see `ShardStream.__next__`)
_USER_ERROR = re.compile(r"(?:itjax\.errors\.)?UserError: ([^\n]+)")
# How a data shard's state and a process's counts are named in a checkpoint's data/ item.
SHARD_NAME = "shard-{index:05d}-of-{count:05d}.tfdata"
COUNTS_NAME = "counts-process-{index:05d}-of-{count:05d}.json"


def shard_name(index: int, count: int) -> str:
  return SHARD_NAME.format(index=index, count=count)


def counts_name(index: int, count: int) -> str:
  return COUNTS_NAME.format(index=index, count=count)


def iterator_options() -> tf.data.Options:
  """Deterministic, and saveable although stateless numpy functions and counters are "external state": the
  sources' numpy functions are pure, and the counters are saved apart (`StreamStats.carry`)."""
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return options


class ShardStream:
  """One data shard's batches as numpy; each one delivered adds its examples to `stats.examples_trained`.

  A UserError raised inside the stream (a data file that changed after it was validated) reaches the caller
  as that UserError, not as TensorFlow's wrapping of it.
  """

  def __init__(self, ds: tf.data.Dataset, stats: StreamStats | None = None,
               side_state: Sequence[SideState] = ()):
    self.stats, self.side_state = stats, list(side_state)
    self._it = iter(ds)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = {k: v.numpy() for k, v in next(self._it).items()}
    except tf.errors.OpError as e:
      # A failed stream's threads go on calling its numpy functions, which need the GIL; freeing the iterator now
      # would wait for them while holding it (a deadlock inside TensorFlow). It is freed at exit instead.
      _FAILED.append(self._it)
      if m := _USER_ERROR.search(e.message or ""):
        raise UserError(m.group(1)) from None
      raise
    if self.stats is not None:
      self.stats.delivered(batch)
    return batch

  def state(self) -> bytes:
    """The iterator's state (and its Python-side parts) as one blob."""
    side = [s.save() for s in self.side_state]  # before the iterator: see `itjax.data.dedup`
    with tempfile.TemporaryDirectory() as d:
      prefix = tf.train.Checkpoint(iterator=self._it).write(os.path.join(d, "it"))
      files = {os.path.basename(p): np.frombuffer(open(p, "rb").read(), np.uint8)  # noqa: SIM115
               for p in tf.io.gfile.glob(prefix + "*")}
    files["side.json"] = np.frombuffer(json.dumps(side).encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **files)
    return out.getvalue()

  def restore(self, blob: bytes, where: str) -> None:
    """Continues from a `state()` blob (`where` names it in errors): the next batch is the one after it."""
    try:
      files = dict(np.load(io.BytesIO(blob), allow_pickle=False))
      side = json.loads(files.pop("side.json").tobytes())
      with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
          with open(os.path.join(d, name), "wb") as f:
            f.write(data.tobytes())
        tf.train.Checkpoint(iterator=self._it).read(os.path.join(d, "it")).assert_consumed()
    except (tf.errors.OpError, ValueError, KeyError, AssertionError, OSError) as e:
      reason = " ".join(str(getattr(e, "message", e)).split())[:300]
      raise UserError(f"{where}: the saved data stream does not match this run's stream ({reason}); the mixture, "
                      "lengths, batch size, packing or seed changed since it was saved? Resume with the run's "
                      "config.gin, or set stream_settings.resume='fresh' to start the data stream afresh") from None
    if len(side) != len(self.side_state):
      raise UserError(f"{where}: the saved data stream has {len(side)} deduplication filters, this run's has "
                      f"{len(self.side_state)}; set stream_settings.resume='fresh' to start the data stream afresh")
    for s, saved in zip(self.side_state, side, strict=True):
      s.load(saved)


class SideState:
  """Python-side state of a stream (saved beside its iterator): `save()` -> JSON-able, `load(saved)`."""

  def save(self) -> object:
    raise NotImplementedError

  def load(self, saved: object) -> None:
    raise NotImplementedError


class HostStream:
  """This process's rows of each global batch: its data shards' batches, concatenated."""

  def __init__(self, shards: Mapping[int, ShardStream], num_shards: int, stats: StreamStats | None,
               process: tuple[int, int]):
    self.shards, self.num_shards, self.stats, self.process = dict(shards), num_shards, stats, process

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(s) for s in self.shards.values()]
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def state(self) -> dict[str, bytes]:
    """Named blobs: each shard's iterator state and this process's stream counts."""
    out = {shard_name(i, self.num_shards): s.state() for i, s in self.shards.items()}
    if self.stats is not None:
      out[counts_name(*self.process)] = json.dumps(self.stats.as_dict()).encode()
    return out

  def restore(self, read: Callable[[str], bytes | None], names: Sequence[str], where: str) -> None:
    """Restores each shard from `read(name)` (`names`: the saved blobs; a missing one is a UserError); carries
    the saved counts: this process's own when the process count is unchanged, else process 0 carries every
    saved process's."""
    for i, s in self.shards.items():
      name = shard_name(i, self.num_shards)
      blob = read(name)
      if blob is None:
        raise UserError(f"{where}: no saved state for data shard {i} of {self.num_shards} ({name}); set "
                        "stream_settings.resume='fresh' to start the data stream afresh")
      s.restore(blob, f"{where}/{name}")
    if self.stats is not None:
      self.stats.carry(saved_counts(read, *self.process, names=names))


def saved_counts(read: Callable[[str], bytes | None], index: int, count: int, names: Sequence[str] = ()
                 ) -> list[dict]:
  """The stream counts a process carries on: its own saved ones, or (process 0, after a change in the process
  count) every saved process's; `names` lists the blobs when the count changed."""
  own = read(counts_name(index, count))
  if own is not None:
    return [json.loads(own)]
  if index != 0:
    return []
  found = [read(n) for n in names if n.startswith("counts-process-")]
  return [json.loads(b) for b in found if b is not None]
