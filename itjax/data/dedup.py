"""Streaming deduplication of training examples: exact duplicates of normalized text, per task and pass.

An example is a duplicate when its normalized text (`itjax.data.quality.normalize` of inputs + "\\n"
+ targets, the key `itjax tasks quality` counts normalized duplicates by; computed in-graph, as a
64-bit fingerprint) was already seen in the same pass over the same task's shard; the first
occurrence is kept. Deduplication runs per task and per pass (epoch), before mixing: the training
stream repeats every task forever, and a filter over the repeated stream would drop everything
after the first pass.

Memory is bounded by a Bloom filter per task, sized for `capacity` distinct examples per pass
(default: the task's shard size when the source knows it, else 1M) at false-positive rate
`fp_rate` (default 1e-6, about 29 bits per example, 3.6 MB per million): while a pass holds at most
`capacity` distinct examples, a unique example is wrongly dropped with probability at most
`fp_rate` (a warning is logged when a pass goes beyond). Hashes are blake2b, each pass is
reshuffled by tf.data's seeded reshuffle-per-iteration and every iterator of the stream filters
with its own Bloom filter, so the stream is deterministic. Drops are counted per task
(`StreamStats.dedup`) and logged at the end of every pass.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from itjax.data.quality import normalize, tf_normalize
from itjax.data.stream_state import SideState
from itjax.data.stream_stats import DedupCounts, StreamStats

log = logging.getLogger("itjax")

DEFAULT_CAPACITY = 1_000_000
DEFAULT_FP_RATE = 1e-6
_KEY = "_dedup_key"
_END = "_dedup_end_of_pass"
_VERDICT = "_dedup_verdict"
KEEP, DROP, STOP = 0, 1, 2


class BloomFilter:
  """A fixed-size set that may answer "seen" wrongly (at `fp_rate` up to `capacity` items), never "unseen"."""

  def __init__(self, capacity: int, fp_rate: float = DEFAULT_FP_RATE):
    if capacity < 1 or not 0 < fp_rate < 1:
      raise ValueError(f"Bloom filter needs capacity >= 1 and 0 < fp_rate < 1, got {capacity}, {fp_rate}")
    self.capacity, self.fp_rate = capacity, fp_rate
    self.num_bits = max(64, math.ceil(-capacity * math.log(fp_rate) / math.log(2) ** 2))
    self.num_hashes = max(1, round(self.num_bits / capacity * math.log(2)))
    self.bits = bytearray((self.num_bits + 7) // 8)
    self.count = 0

  def _positions(self, item: str | int) -> Iterator[tuple[int, int]]:
    """(byte, bit mask) of the item's `num_hashes` bits: double hashing (Kirsch & Mitzenmacher 2006)."""
    data = item.to_bytes(8, "little", signed=True) if isinstance(item, int) else item.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=16).digest()
    h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1
    for i in range(self.num_hashes):
      b = (h1 + i * h2) % self.num_bits
      yield b >> 3, 1 << (b & 7)

  def __contains__(self, item: str | int) -> bool:
    return all(self.bits[byte] & mask for byte, mask in self._positions(item))

  def add(self, item: str | int) -> bool:
    """Adds `item` (a string or a 64-bit fingerprint); True if it was (probably) there already."""
    seen = True
    bits = self.bits
    for byte, mask in self._positions(item):
      if not bits[byte] & mask:
        seen = False
        bits[byte] |= mask
    self.count += not seen
    return seen

  def clear(self) -> None:
    self.bits = bytearray(len(self.bits))
    self.count = 0


def example_text(ex: Mapping[str, np.ndarray]) -> str:
  """What the dedup key hashes, for a numpy example (in Python): its normalized inputs + targets text."""
  return normalize(ex["inputs_pretokenized"].decode("utf-8", "replace") + "\n"
                   + ex["targets_pretokenized"].decode("utf-8", "replace"))


def tf_key(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """The dedup key in-graph: a 64-bit fingerprint of the normalized text (of the token ids without text)."""
  if "inputs_pretokenized" in ex and "targets_pretokenized" in ex:
    text = tf_normalize(tf.strings.join([ex["inputs_pretokenized"], "\n", ex["targets_pretokenized"]]))
  else:
    text = tf.strings.join([tf.strings.reduce_join(tf.strings.as_string(ex[k]), separator=" ")
                            for k in ("inputs", "targets")], "\n")
  return tf.strings.to_hash_bucket_fast(text, 2**63 - 1)


class _PassFilter(SideState):
  """The Python side of the filter: one Bloom filter per iterator, cleared at the end of every pass.

  Saved beside the stream's iterator (`itjax.data.stream_state`), just before it: examples the stream
  reads in between are in the saved iterator's buffers but not in the saved filters, so after a restore
  at most that many (the stream's read-ahead) duplicates of them can pass once more in the same pass.
  """

  def __init__(self, task: str, capacity: int, fp_rate: float, counts: DedupCounts):
    self.task, self.capacity, self.fp_rate, self.counts = task, capacity, fp_rate, counts
    self.passes: dict[int, list] = {}  # iterator id -> [bloom, pass, read, dropped]
    self.lock = threading.Lock()

  def save(self) -> dict:
    with self.lock:
      return {str(i): [base64.b64encode(bytes(b.bits)).decode(), b.count, *rest]
              for i, (b, *rest) in self.passes.items()}

  def load(self, saved: dict) -> None:
    with self.lock:
      self.passes = {}
      for i, (bits, count, *rest) in saved.items():
        bloom = BloomFilter(self.capacity, self.fp_rate)
        bloom.bits, bloom.count = bytearray(base64.b64decode(bits)), count
        self.passes[int(i)] = [bloom, *rest]

  def verdict(self, iterator: np.int64, key: np.int64, end: np.bool_) -> np.int32:
    """KEEP, DROP, or STOP (the end of a pass that read nothing: an empty shard ends the stream)."""
    with self.lock:
      return self._verdict(iterator, key, end)

  def _verdict(self, iterator: np.int64, key: np.int64, end: np.bool_) -> np.int32:
    state = self.passes.setdefault(int(iterator), [BloomFilter(self.capacity, self.fp_rate), 0, 0, 0])
    bloom, epoch, read, dropped = state
    if end:
      self.counts.epochs += 1
      log.info("dedup %s: pass %d dropped %d of %d examples (normalized-text duplicates)", self.task, epoch, dropped,
               read)
      if bloom.count > self.capacity:
        log.warning("dedup %s: %d distinct examples in a pass, over the Bloom filter's capacity %d: the "
                    "false-positive rate exceeds %g", self.task, bloom.count, self.capacity, self.fp_rate)
      bloom.clear()
      state[1:] = [epoch + 1, 0, 0]
      return np.int32(STOP if read == 0 else DROP)
    state[2] += 1
    self.counts.examples += 1
    if bloom.add(int(key)):
      state[3] += 1
      self.counts.dropped += 1
      return np.int32(DROP)
    return np.int32(KEEP)


def _iterator_ids() -> tf.data.Dataset:
  """One fresh id per iterator (drawn when it first reads), so that each iterator filters with its own state; a
  restored iterator keeps the id it was saved with (tf.data saves the element a flat_map is in)."""
  ids = itertools.count()
  fresh = tf.autograph.experimental.do_not_convert(
      lambda _: tf.ensure_shape(tf.numpy_function(lambda: np.int64(next(ids)), [], tf.int64, stateful=True), []))
  return tf.data.Dataset.range(1).map(fresh)


def deduplicated(task: seqio.Task, lengths: Mapping[str, int], *, keep: Sequence[str], seed: int,
                 shard_info: seqio.ShardInfo | None, use_cached: bool, stats: StreamStats,
                 capacity: int | None = None, fp_rate: float = DEFAULT_FP_RATE,
                 side_state: list[SideState] | None = None) -> tf.data.Dataset:
  """The task's infinite training stream (features `keep` that it has), without duplicates within a pass.

  Each pass over the shard ends with a marker element; repeating the pass reshuffles it (seeded,
  so the sequence of passes is fixed).
  """
  one_pass = task.get_dataset(lengths, split="train", shuffle=True, seed=seed, shard_info=shard_info, num_epochs=1,
                              use_cached=use_cached)
  one_pass = one_pass.map(lambda ex: {**{k: v for k, v in ex.items() if k in keep}, _KEY: tf_key(ex), _END: False},
                          num_parallel_calls=tf.data.AUTOTUNE)
  marker = {k: tf.fill([d or 0 for d in spec.shape], "" if spec.dtype == tf.string else tf.zeros([], spec.dtype))
            for k, spec in one_pass.element_spec.items()}
  marker[_END] = tf.constant(True)
  passes = one_pass.concatenate(tf.data.Dataset.from_tensors(marker)).repeat()
  if capacity is None:
    total = task.num_input_examples("train")
    shards = shard_info.num_shards if shard_info else 1
    capacity = max(1024, math.ceil(1.1 * total / shards)) if total else DEFAULT_CAPACITY
  check = _PassFilter(task.name, capacity, fp_rate, stats.dedup.setdefault(task.name, DedupCounts()))
  if side_state is not None:
    side_state.append(check)  # saved with the stream's iterator

  def judged(iterator):
    def judge(ex):  # sequential (a plain map): the filter's state sees the stream in order
      v = tf.numpy_function(check.verdict, [iterator, ex[_KEY], ex[_END]], tf.int32, stateful=True)
      return {**ex, _VERDICT: tf.ensure_shape(v, [])}

    return passes.map(judge)

  def going(ex):
    return tf.not_equal(ex[_VERDICT], STOP)

  def kept(ex):
    return tf.equal(ex[_VERDICT], KEEP)

  def public(ex):
    return {k: v for k, v in ex.items() if k not in (_KEY, _END, _VERDICT)}

  return _iterator_ids().flat_map(judged).take_while(going).filter(kept).map(public)
