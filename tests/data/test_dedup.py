"""Streaming dedup: normalized-text duplicates dropped per task and pass, counted; off by default; deterministic."""

import random

import numpy as np
import pytest
import seqio

from itjax.data import dedup
from itjax.data.pipeline import train_dataset, train_examples
from itjax.data.quality import normalize
from itjax.data.sources import procedural_source
from itjax.data.stream_stats import StreamStats
from itjax.data.tasks import register_instruction_task
from itjax.data.templates import Template as T
from itjax.data.vocab import REGISTERED

LENGTHS = {"inputs": 24, "targets": 16}
# 40 examples, 4 distinct after normalization (case and punctuation differ).
VALUES = ["alpha", "Alpha!", "beta", "BETA.", "gamma", "delta"]


@pytest.fixture(scope="module")
def dup_task():
  def gen(r: random.Random):
    v = VALUES[r.randrange(len(VALUES))]
    return {"x": v, "answer": v.lower().strip("!.")}

  (name,) = register_instruction_task("dedup_q", "q", procedural_source(gen, ("x",), {"train": 40}, seed=11),
                                      [T("Echo {x}")], fields=("x",), has_options=False)[:1]
  yield name
  seqio.TaskRegistry.remove(name)


def _texts(name):
  """The task's 40 training examples' normalized texts, in source order."""
  rows = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False).as_numpy_iterator()
  return [dedup.example_text(r) for r in rows]


def test_bloom_filter_is_exact_on_repeats_and_near_its_false_positive_rate():
  bloom = dedup.BloomFilter(capacity=5000, fp_rate=0.01)
  assert bloom.num_hashes == 7 and bloom.num_bits == 47926
  assert sum(bloom.add(f"item {i}") for i in range(5000)) < 5000 * 0.01  # new items: "seen" only by false positive
  assert all(bloom.add(f"item {i}") for i in range(5000))      # all seen
  false_positives = sum(f"other {i}" in bloom for i in range(5000))
  assert false_positives < 5000 * 0.02 and "item 7" in bloom
  bloom.clear()
  assert not bloom.add("item 1") and bloom.count == 1


def test_each_pass_keeps_one_of_each_normalized_text_and_counts_the_rest(dup_task):
  texts = _texts(dup_task)
  distinct = set(texts)
  assert len(texts) == 40 and len(distinct) == 4
  stats = StreamStats()
  stream = train_examples(dup_task, LENGTHS, seed=0, dedup=True, keep_text=True, stats=stats)
  rows = list(stream.take(3 * len(distinct)).as_numpy_iterator())
  for p in range(3):  # three passes: each holds every distinct text exactly once
    assert sorted(dedup.example_text(r) for r in rows[4 * p:4 * p + 4]) == sorted(distinct)
  counts = stats.dedup[dup_task]
  assert counts.epochs >= 2 and counts.dropped >= 2 * 36 and counts.examples - counts.dropped >= 3 * 4
  d = stats.as_dict()
  assert d["dedup_dropped"] == counts.dropped and d["dedup_per_task"][dup_task]["epochs"] == counts.epochs


def test_dedup_is_off_by_default_deterministic_and_reaches_batches(dup_task):
  vocab = REGISTERED

  def batch_texts(**kw):
    batches = train_dataset(dup_task, LENGTHS, 4, seed=3, pack=False, **kw).take(2).as_numpy_iterator()
    return [vocab.decode([int(t) for t in row if t > 1]) for b in batches for row in b["decoder_target_tokens"]]

  plain = batch_texts()
  assert len({normalize(t) for t in plain[:4]}) < 4  # duplicates without dedup
  stats = StreamStats()
  deduped = batch_texts(dedup=True, stats=stats)
  assert deduped == batch_texts(dedup=True)  # deterministic
  assert len({normalize(t) for t in deduped[:4]}) == 4  # the first pass: four distinct texts
  assert stats.as_dict()["dedup_dropped"] > 0 and "dedup_dropped=" in stats.summary()


def test_dedup_packs_with_best_fit(dup_task):
  batch = next(train_dataset(dup_task, LENGTHS, 2, seed=0, dedup=True).as_numpy_iterator())
  assert batch["decoder_segment_ids"].max() > 1 and np.all(batch["decoder_input_tokens"][:, 0] == 0)


def test_an_empty_shard_ends_the_stream_as_without_dedup(dup_task):
  for dedup_on in (False, True):
    empty = train_examples(dup_task, LENGTHS, seed=0, shard_index=50, num_shards=64, dedup=dedup_on)
    assert list(empty.take(3).as_numpy_iterator()) == []
