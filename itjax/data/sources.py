"""Data sources that feed templates: procedurally generated examples (offline)."""

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

  def rows(split: bytes, start: int, step: int):
    split = split.decode()
    for i in range(start, sizes[split], step):
      ex = generate(random.Random(f"{seed}/{split}/{i}"))
      yield {**{k: ex[k] for k in names}, "options": list(ex.get("options", [])), "split": split}

  spec = {k: tf.TensorSpec([], tf.string) for k in names + ("split",)}
  spec["options"] = tf.TensorSpec([None], tf.string)

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # order is fixed; seqio shuffles examples downstream
    return tf.data.Dataset.from_generator(rows, output_signature=spec, args=(split, 0, 1))

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(sizes), num_input_examples=dict(sizes))
