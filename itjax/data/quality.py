"""Training-data quality: exact/normalized duplicates and n-gram contamination.

Contamination follows GPT-3 and lm-evaluation-harness: text is lowercased,
punctuation stripped and split into words; a training example is contaminated
when it shares an n-gram (n=13) with any eval example. An eval text shorter
than n words counts as one gram matched as a whole word run, so short prompts
(common in instruction data) are not blind spots. The same normalization runs in Python
(scans, reports) and inside tf.data (filtering), so both agree.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import tensorflow as tf

from itjax.data import skips
from itjax.data.registry import leaf_tasks

N = 13
_PUNCT = re.escape(string.punctuation)
_HASH_BUCKETS = 2**62


def normalize(text: str) -> str:
  """Lowercase, punctuation to spaces, whitespace collapsed."""
  return " ".join(re.sub(f"[{_PUNCT}]", " ", text.lower()).split())


def ngram_strings(text: str, n: int = N) -> list[str]:
  """The normalized word n-grams of `text` (the whole text when shorter than n words)."""
  words = normalize(text).split()
  if not words:
    return []
  if len(words) < n:
    return [" ".join(words)]
  return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def tf_normalize(text: tf.Tensor) -> tf.Tensor:
  """In-graph `normalize` (the same result on ASCII text; tf lowercases ASCII letters only)."""
  text = tf.strings.regex_replace(tf.strings.lower(text), f"[{_PUNCT}]", " ")
  return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def _hash(strings):
  return tf.strings.to_hash_bucket_fast(tf.constant(sorted(strings), tf.string), _HASH_BUCKETS).numpy()


class NgramIndex:
  """Hashed n-grams of eval texts; `contains` / `tf_contaminated` test training texts against them."""

  def __init__(self, texts: Iterable[str], n: int = N, long_only: Iterable[str] = ()):
    """`texts` (eval prompts) are indexed whole when short; `long_only` texts (eval answers,
    often one generic word) only through their full n-grams."""
    self.n = n
    self.grams = {g for t in texts for g in ngram_strings(t, n)}
    self.grams |= {g for t in long_only for g in ngram_strings(t, n) if len(g.split()) == n}
    # Whole short eval texts are matched as word runs of their own length.
    self.lengths = sorted({len(g.split()) for g in self.grams})
    # Built eagerly (not inside a tf.data trace): hashes of every gram, for the in-graph filter.
    self._table = _static_set(set(_hash(self.grams).tolist()) if self.grams else set())

  def __len__(self) -> int:
    return len(self.grams)

  def contains(self, text: str) -> bool:
    words = normalize(text).split()
    return any(" ".join(words[i:i + k]) in self.grams for k in self.lengths for i in range(len(words) - k + 1))

  def tf_contaminated(self, text: tf.Tensor) -> tf.Tensor:
    """In-graph `contains`, for filtering a tf.data pipeline."""
    words = tf.strings.split(tf_normalize(text))
    hit = tf.constant(False)
    for k in self.lengths:
      runs = tf.strings.ngrams(words, k, separator=" ")
      hit = hit | tf.reduce_any(self._table.lookup(tf.strings.to_hash_bucket_fast(runs, _HASH_BUCKETS)) > 0)
    return hit


def _static_set(hashes: set[int]) -> tf.lookup.StaticHashTable:
  keys = tf.constant(sorted(hashes) or [-1], tf.int64)
  return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys)), 0)


def eval_index(eval_names: Sequence[str], splits: Sequence[str] = ("validation",), n: int = N) -> NgramIndex:
  """The n-gram index of every rendered eval example (inputs, and targets' long n-grams) of `splits`.

  A task without one of the splits contributes the others.
  """
  inputs, targets = [], []
  for name in eval_names:
    for task in leaf_tasks(name):
      for split in dict.fromkeys(splits):
        if split not in task.splits:
          continue
        for ex in task.get_dataset(None, split=split, shuffle=False, num_epochs=1).as_numpy_iterator():
          inputs.append(ex["inputs_pretokenized"].decode())
          targets.append(ex["targets_pretokenized"].decode())
  return NgramIndex(inputs, n, long_only=targets)


def scan(train_name: str, eval_names: Sequence[str], *, max_per_task: int | None = None, n: int = N,
         feature_lengths: Mapping[str, int] | None = None, eval_splits: Sequence[str] = ("validation",)) -> dict:
  """Counts per training task: examples, exact and normalized duplicates, contaminated examples
  (against `eval_splits` of the eval tasks), (given feature lengths) examples whose inputs or
  targets will be truncated, and source rows skipped by the dataset's documented filters while
  reading them (`itjax.data.skips`; exact when a task is read whole)."""
  index = eval_index(eval_names, eval_splits, n=n)
  per_task = {}
  for task in leaf_tasks(train_name):
    ds = task.get_dataset(None, split="train", shuffle=False, num_epochs=1)
    if max_per_task:
      ds = ds.take(max_per_task)
    exact, normal, contaminated, total, truncated = Counter(), Counter(), 0, 0, 0
    before = skips.total(skips.skip_counts([task]))
    for ex in ds.as_numpy_iterator():
      if feature_lengths:
        # Untrimmed here; targets already end with EOS, as they do after trimming.
        truncated += (len(ex["inputs"]) > feature_lengths["inputs"]
                      or len(ex["targets"]) > feature_lengths["targets"])
      text = ex["inputs_pretokenized"].decode() + "\n" + ex["targets_pretokenized"].decode()
      exact[text] += 1
      normal[normalize(text)] += 1
      contaminated += index.contains(text)
      total += 1
    per_task[task.name] = {"examples": total, "exact_duplicates": total - len(exact),
                           "normalized_duplicates": total - len(normal), "contaminated": contaminated,
                           "truncated": truncated if feature_lengths else None,
                           "skipped": skips.total(skips.skip_counts([task])) - before}
  keys = ("examples", "exact_duplicates", "normalized_duplicates", "contaminated", "skipped")
  totals = {k: sum(t[k] for t in per_task.values()) for k in keys}
  totals["truncated"] = sum(t["truncated"] for t in per_task.values()) if feature_lengths else None
  return {"train": train_name, "eval": list(eval_names), "eval_splits": list(dict.fromkeys(eval_splits)),
          "ngram": n, "eval_ngrams": len(index),
          "max_examples_per_task": max_per_task, "totals": totals, "tasks": per_task}
