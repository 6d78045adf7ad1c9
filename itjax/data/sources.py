"""Data sources that feed templates: TFDS datasets and procedurally generated examples.

Every source adds a "split" string feature: templating renders one template
per example on the train split and every template on eval splits.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from itjax.data import row_index
from itjax.errors import UserError

Example = dict  # field name -> str, plus "answer": str and "options": list[str]


def procedural_source(generate: Callable[[random.Random], Example], fields: Sequence[str],
                      sizes: Mapping[str, int], seed: int) -> seqio.FunctionDataSource:
  """A deterministic source: example i of split s comes from Random((seed, s, i)).

  Each example is generated from its own RNG so that shards, resumption and
  different split sizes never change the content of any example.
  """
  example_seed = seed
  names = tuple(fields) + ("answer",)
  spec = {k: tf.TensorSpec([], tf.string) for k in names}
  spec["options"] = tf.TensorSpec([None], tf.string)

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # order is fixed; seqio shuffles examples downstream

    def fetch(start: int, stop: int) -> dict:  # example i from its own RNG: a pure function of i
      exs = [generate(random.Random(f"{example_seed}/{split}/{i}")) for i in range(start, stop)]
      return {**{k: [ex[k] for ex in exs] for k in names},
              "options": row_index.padded([list(ex.get("options", [])) for ex in exs])}

    ds = row_index.indexed_dataset(sizes[split], fetch, spec)
    return ds.map(lambda ex: {**ex, "options": row_index.unpadded(ex["options"]), "split": tf.constant(split)})

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
    # read_only: never download_and_prepare (nothing downloads from a dataset hub); absent data is a UserError.
    super().__init__(*args, read_only=True, **kwargs)
    self._max = dict(max_examples or {})

  def _unprepared(self, split: str) -> UserError | None:
    """The UserError to raise when the dataset's data is not in the TFDS data directory, else None."""
    try:
      builder = self.tfds_dataset._get_builder(split)  # noqa: SLF001  (seqio memoizes it)
      if builder.is_prepared():
        return None
    except Exception as e:  # noqa: BLE001 -- tfds raises many kinds for an unknown name or an unreadable dir
      return UserError(f"TFDS dataset {self.tfds_dataset.name!r}: cannot open it ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]})")
    return UserError(f"TFDS dataset {self.tfds_dataset.name!r} is not prepared in {builder.data_dir_root} (set "
                     f"TFDS_DATA_DIR to where it is, or prepare it with `tfds build "
                     f"{self.tfds_dataset.name.split(':')[0]}` on a machine with network access)")

  def _read(self, split: str, fn):
    """`fn()`, with a failure that comes from absent data (not from a bug) turned into a UserError."""
    try:
      return fn()
    except Exception:
      if (err := self._unprepared(split)) is not None:
        raise err from None
      raise

  def list_shards(self, split: str) -> Sequence[str]:
    return self._read(split, lambda: super(TfdsSource, self).list_shards(split))

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached: bool = False,
                  num_epochs: int | None = 1) -> tf.data.Dataset:
    cap = self._max.get(split)
    ds = self._read(split, lambda: super(TfdsSource, self).get_dataset(
        split=split, shuffle=shuffle and cap is None, seed=seed, shard_info=shard_info,
        sequence_length=sequence_length, use_cached=use_cached, num_epochs=num_epochs))
    if cap is not None:
      ds = ds.take(shard_quota(cap, shard_info))
    return add_split(ds, split)

  def num_input_examples(self, split: str) -> int | None:
    n = self._read(split, lambda: super(TfdsSource, self).num_input_examples(split))
    cap = self._max.get(split)
    return n if cap is None or n is None else min(n, cap)


def shard_quota(total: int, shard_info: seqio.ShardInfo | None) -> int:
  """Shard i's part of `total` examples split over the shards as evenly as possible (the parts sum to it)."""
  if shard_info is None:
    return total
  base, extra = divmod(total, shard_info.num_shards)
  return base + (shard_info.index < extra)
