"""Shared pieces of the FLAN task modules: TFDS sources, raw-feature mapping, registration.

A dataset is registered from a `convert` function (raw TFDS example -> template
fields, "answer" and optionally "options") and an optional `keep` predicate on
the raw example (drops unlabeled rows, e.g. label -1 on GLUE test sets). Every
converted string (options included) is stripped, the "split" feature is carried
over, and rows whose answer is empty are dropped. Both drops are counted per
dataset (`itjax.data.skips`: one `SkipCounts` per dataset, created here and kept
on its tasks): training logs them, `itjax tasks quality` reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf

from itjax.data.skips import SkipCounts, counted_filter
from itjax.data.sources import TfdsSource
from itjax.data.tasks import register_instruction_task
from itjax.data.templates import Template

Features = dict[str, tf.Tensor]
Convert = Callable[[Features], Features]
Keep = Callable[[Features], tf.Tensor]
Preprocessor = Callable[[tf.data.Dataset], tf.data.Dataset]

PREFIX = "flan_"
# FLAN (Wei et al. 2021): at most 30k training examples per dataset.
MAX_TRAIN_EXAMPLES = 30_000
# Split maps (itjax split -> TFDS split expression) shared by many datasets.
TRAIN_VAL = {"train": "train", "validation": "validation"}
TRAIN_VAL_TEST = {"train": "train", "validation": "validation", "test": "test"}
# For datasets without a dev split: their labeled test split is what zero-shot evaluation reads.
TEST_AS_VAL = {"train": "train", "validation": "test"}
# For datasets with a single (train) split: the last rows are held back for evaluation.
CARVED = {"train": "train[:-2000]", "validation": "train[-2000:-1000]", "test": "train[-1000:]"}


SKIP_FILTERED = "rejected by the dataset's filter (unlabeled, out-of-range label or excluded class)"
SKIP_EMPTY = "empty answer"


def preprocessor(convert: Convert, keep: Keep | None, counts: SkipCounts) -> Preprocessor:
  """ds -> ds: filters raw rows with `keep`, maps them with `convert`, keeps "split", drops empty answers
  (both drops counted in `counts`, the dataset's counters)."""

  def apply(ds: tf.data.Dataset) -> tf.data.Dataset:
    if keep is not None:
      ds = counted_filter(ds, keep, counts=counts, reason=SKIP_FILTERED)

    def to_fields(ex: Features) -> Features:
      out = {k: tf.convert_to_tensor(v) for k, v in convert(ex).items()}
      out = {k: tf.strings.strip(v) if v.dtype == tf.string else v for k, v in out.items()}
      if "options" not in out:
        out["options"] = tf.constant([], tf.string)
      out["split"] = ex["split"]
      return out

    ds = ds.map(to_fields, num_parallel_calls=tf.data.AUTOTUNE)
    return counted_filter(ds, lambda ex: tf.strings.length(ex["answer"]) > 0, counts=counts, reason=SKIP_EMPTY)

  return apply


def get(ex: Features, key: str) -> tf.Tensor:
  """A raw feature by path: "question/stem" reads ex["question"]["stem"]."""
  for part in key.split("/"):
    ex = ex[part]
  return ex


def pick(values: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  return tf.gather(values, tf.cast(index, tf.int32))


def has_index(index: tf.Tensor, size: int | tf.Tensor) -> tf.Tensor:
  """Whether `index` selects an element of a list of `size` (labels of -1 mark unlabeled rows)."""
  index = tf.cast(index, tf.int64)
  return tf.logical_and(index >= 0, index < tf.cast(size, tf.int64))


def numbered(items: tf.Tensor) -> tf.Tensor:
  """'1. a\\n2. b' from a 1-D string tensor."""
  items, numbers = tf.strings.strip(items), tf.strings.as_string(tf.range(1, tf.size(items) + 1))
  return tf.strings.reduce_join(tf.strings.join([numbers, items], separator=". "), separator="\n")


def with_answer(options: tf.Tensor, answer: tf.Tensor) -> tf.Tensor:
  """Unique options (first occurrence order), with the answer appended if it is missing."""
  return tf.unique(tf.concat([options, tf.reshape(answer, [1])], axis=0)).y


def label_converter(label: str, options: Sequence[str], fields: Mapping[str, str | Callable]) -> Convert:
  """Classification: fields copied (or computed) from raw features, answer = options[label]."""

  def convert(ex: Features) -> Features:
    opts = tf.constant(list(options))
    out = {k: v(ex) if callable(v) else get(ex, v) for k, v in fields.items()}
    return {**out, "options": opts, "answer": pick(opts, get(ex, label))}

  return convert


def label_keep(label: str, num_options: int) -> Keep:
  return lambda ex: has_index(get(ex, label), num_options)


def register(dataset: str, cluster: str | Sequence[str], tfds_name: str, splits: Mapping[str, str],
             templates: Sequence[Template], fields: Sequence[str], convert: Convert, *, keep: Keep | None = None,
             has_options: bool = False) -> list[str]:
  """Registers `flan_<dataset>_<variant>` over a lazy TFDS source; returns the task names."""
  counts = SkipCounts(PREFIX + dataset)
  return register_instruction_task(
      PREFIX + dataset, cluster,
      TfdsSource(tfds_name=tfds_name, splits=dict(splits), max_examples={"train": MAX_TRAIN_EXAMPLES}),
      templates, fields=fields,
      has_options=has_options, preprocessors=(preprocessor(convert, keep, counts),), skips=counts)


def register_labeled(dataset: str, cluster: str | Sequence[str], tfds_name: str, splits: Mapping[str, str],
                     templates: Sequence[Template], *, label: str, options: Sequence[str],
                     fields: Mapping[str, str | Callable]) -> list[str]:
  """A classification dataset: answer = options[label], rows with out-of-range labels dropped."""
  return register(dataset, cluster, tfds_name, splits, templates, tuple(fields),
                  label_converter(label, options, fields), keep=label_keep(label, len(options)), has_options=True)
