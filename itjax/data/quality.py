"""Training-data quality: exact/normalized duplicates and n-gram contamination.

Contamination follows GPT-3 and lm-evaluation-harness: text is lowercased,
punctuation stripped and split into words; a training example is contaminated
when it shares an n-gram (n=13) with any eval example. An eval text shorter
than n words counts as one gram matched as a whole word run, so short prompts
(common in instruction data) are not blind spots. The same normalization runs in Python
(scans, reports) and inside tf.data (filtering), so both agree. `contamination` checks one pass over a training
mixture against several eval sets, each indexed once, and counts per set and per training task.
"""

from __future__ import annotations

import logging
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import tensorflow as tf

from itjax.data import skips
from itjax.data.registry import leaf_tasks

N = 13
_PUNCT = re.escape(string.punctuation)
_HASH_BUCKETS = 2**62
PROGRESS_EVERY_S = 10.0
log = logging.getLogger("itjax")


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
    return self.contains_words(normalize(text).split())

  def contains_words(self, words: Sequence[str]) -> bool:
    """`contains` of a text already normalized and split into words (one split for several indexes)."""
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


def _train_examples(task, max_per_task: int | None) -> Iterator[dict]:
  """A training task's examples as `scan` and `contamination` read them: untrimmed, in order, the first
  `max_per_task`."""
  ds = task.get_dataset(None, split="train", shuffle=False, num_epochs=1)
  if max_per_task:
    ds = ds.take(max_per_task)
  return ds.as_numpy_iterator()


def _text(ex: Mapping) -> str:
  """What a training example is checked by: its inputs and targets, untruncated."""
  return ex["inputs_pretokenized"].decode() + "\n" + ex["targets_pretokenized"].decode()


class _Every:
  """True at most every `seconds` (for progress lines)."""

  def __init__(self, seconds: float = PROGRESS_EVERY_S):
    self.seconds, self.start = seconds, time.monotonic()
    self.last = self.start

  def __call__(self) -> bool:
    now = time.monotonic()
    if now - self.last < self.seconds:
      return False
    self.last = now
    return True

  @property
  def elapsed(self) -> float:
    return time.monotonic() - self.start


def contamination(train_name: str, eval_sets: Mapping[str, Sequence[str]], *, max_per_task: int | None = None,
                  n: int = N, eval_splits: Sequence[str] = ("validation",),
                  progress: Callable[[str], None] | None = None) -> dict:
  """Training examples sharing an n-gram with each eval set: one pass over the training mixture (the first
  `max_per_task` examples of each task), each set's index (`eval_index` of its `eval_splits`) built once.

  Returns {"train", "ngram", "eval_splits", "max_examples_per_task", "examples" (scanned in all),
  "tasks": {training task: examples scanned}, "sets": {set: {"eval", "eval_ngrams", "contaminated",
  "tasks": {training task: contaminated examples}}}}; a set's "tasks" lists only tasks with some, most first.
  Progress lines (at most every 10 s) go to `progress`, by default the "itjax" logger at INFO.
  """
  say = progress or log.info
  splits = list(dict.fromkeys(eval_splits))
  indexes = {}
  for set_name, names in eval_sets.items():
    indexes[set_name] = eval_index(list(names), splits, n=n)
    say(f"decontamination: eval set {set_name} indexed ({len(indexes[set_name]):,} grams of {', '.join(names)}, "
        f"{'/'.join(splits)})")
  tasks = leaf_tasks(train_name)
  scanned: dict[str, int] = {}
  hits = {s: Counter() for s in indexes}
  every = _Every()
  for k, task in enumerate(tasks):
    count = 0
    for ex in _train_examples(task, max_per_task):
      words = normalize(_text(ex)).split()
      for set_name, index in indexes.items():
        hits[set_name][task.name] += index.contains_words(words)
      count += 1
      if every():
        say(f"decontamination of {train_name}: {k}/{len(tasks)} training tasks, "
            f"{sum(scanned.values()) + count:,} examples, {every.elapsed:.0f} s ({task.name})")
    scanned[task.name] = count
  say(f"decontamination of {train_name}: {sum(scanned.values()):,} examples of {len(tasks)} tasks scanned in "
      f"{every.elapsed:.0f} s")
  sets = {s: {"eval": list(eval_sets[s]), "eval_ngrams": len(index), "contaminated": sum(hits[s].values()),
              "tasks": {t: c for t, c in hits[s].most_common() if c}} for s, index in indexes.items()}
  return {"train": train_name, "ngram": n, "eval_splits": splits, "max_examples_per_task": max_per_task,
          "examples": sum(scanned.values()), "tasks": scanned, "sets": sets}


def scan(train_name: str, eval_names: Sequence[str], *, max_per_task: int | None = None, n: int = N,
         feature_lengths: Mapping[str, int] | None = None, eval_splits: Sequence[str] = ("validation",)) -> dict:
  """Counts per training task: examples, exact and normalized duplicates, contaminated examples
  (against `eval_splits` of the eval tasks), (given feature lengths) examples whose inputs or
  targets will be truncated, and source rows skipped by the dataset's documented filters while
  reading them (`itjax.data.skips`; exact when a task is read whole)."""
  index = eval_index(eval_names, eval_splits, n=n)
  per_task = {}
  for task in leaf_tasks(train_name):
    exact, normal, contaminated, total, truncated = Counter(), Counter(), 0, 0, 0
    before = skips.total(skips.skip_counts([task]))
    for ex in _train_examples(task, max_per_task):
      if feature_lengths:
        # Untrimmed here; targets already end with EOS, as they do after trimming.
        truncated += (len(ex["inputs"]) > feature_lengths["inputs"]
                      or len(ex["targets"]) > feature_lengths["targets"])
      text = _text(ex)
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
