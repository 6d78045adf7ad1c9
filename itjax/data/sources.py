"""Data sources that feed templates: TFDS datasets and procedurally generated examples.

Every source adds a "split" string feature: templating renders one template
per example on the train split and every template on eval splits.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

Example = dict  # field name -> str, plus "answer": str and "options": list[str]


def procedural_source(generate: Callable[[random.Random], Example], fields: Sequence[str],
                      sizes: Mapping[str, int], seed: int) -> seqio.FunctionDataSource:
  """A deterministic source: example i of split s comes from Random((seed, s, i)).

  Each example is generated from its own RNG so that shards, resumption and
  different split sizes never change the content of any example.
  """
  names = tuple(fields) + ("answer",)

  def rows(split: bytes):
    split = split.decode()
    for i in range(sizes[split]):
      ex = generate(random.Random(f"{seed}/{split}/{i}"))
      yield {**{k: ex[k] for k in names}, "options": list(ex.get("options", [])), "split": split}

  spec = {k: tf.TensorSpec([], tf.string) for k in names + ("split",)}
  spec["options"] = tf.TensorSpec([None], tf.string)

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # order is fixed; seqio shuffles examples downstream
    return tf.data.Dataset.from_generator(rows, output_signature=spec, args=(split,))

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(sizes), num_input_examples=dict(sizes))


def add_split(ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
  return ds.map(lambda ex: {**ex, "split": tf.constant(split)}, num_parallel_calls=tf.data.AUTOTUNE)


class TfdsSource(seqio.TfdsDataSource):
  """`seqio.TfdsDataSource` that tags examples with their split name (lazy: loads nothing here).

  `splits` maps itjax split names to TFDS split expressions, e.g.
  {"train": "train", "validation": "validation_matched"}. `max_examples` caps splits (FLAN reads at
  most 30k training examples per dataset): a capped split is the first `max` examples in file order,
  the same subset every epoch (files are not shuffled; the task's shuffle buffer still mixes
  them), and each of `n` host shards reads its `max / n` part. Mixing rates see the capped size.
  """

  def __init__(self, *args, max_examples: Mapping[str, int] | None = None, **kwargs):
    super().__init__(*args, **kwargs)
    self._max = dict(max_examples or {})

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached: bool = False,
                  num_epochs: int | None = 1) -> tf.data.Dataset:
    cap = self._max.get(split)
    ds = super().get_dataset(split=split, shuffle=shuffle and cap is None, seed=seed, shard_info=shard_info,
                             sequence_length=sequence_length, use_cached=use_cached, num_epochs=num_epochs)
    if cap is not None:
      ds = ds.take(shard_quota(cap, shard_info))
    return add_split(ds, split)

  def num_input_examples(self, split: str) -> int | None:
    n = super().num_input_examples(split)
    cap = self._max.get(split)
    return n if cap is None or n is None else min(n, cap)


def shard_quota(total: int, shard_info: seqio.ShardInfo | None) -> int:
  """Shard i's part of `total` examples split over the shards as evenly as possible (the parts sum to it)."""
  if shard_info is None:
    return total
  base, extra = divmod(total, shard_info.num_shards)
  return base + (shard_info.index < extra)
