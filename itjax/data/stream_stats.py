"""Counts of what a training stream drops, truncates, expands and pads, kept while it streams.

Nothing leaves the stream silently: every documented policy that skips or cuts something
(decontamination, deduplication, chat truncation, the encoder-decoder chat split) adds to one of
these counters, and the packer reports its efficiency here. In-graph counts are int64
`tf.Variable`s incremented inside tf.data functions; Python-side ones (dedup, packing) are ints.
A `StreamStats` covers everything streamed by the datasets built with it, including the batches a
resumed run skips to reach its position; each stage counts as it reads, and tf.data reads ahead
of the batches delivered, so the counts run somewhat ahead of the training step. Rows the tasks'
own source filters skipped (`itjax.data.skips`) are read from the stream's tasks (`add_tasks`;
`itjax.data.pipeline` adds the ones it streams): those counts are per process, over everything
read from the tasks' datasets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import seqio
import tensorflow as tf

from itjax.data import skips
from itjax.data.packing import PackingStats
from itjax.models.features import PREFERENCE_IDS

log = logging.getLogger("itjax")

# In-graph counters and what they count.
GRAPH_COUNTERS = {
    "examples": "examples read from the tasks (after dedup; before decontamination and packing; tf.data reads "
                "ahead, so this includes prefetched examples not yet trained on: see examples_trained)",
    "inputs_truncated": "examples whose inputs were cut to the inputs length",
    "targets_truncated": "examples whose targets were cut to the targets length (EOS kept)",
    "decontaminated": "examples dropped for sharing an n-gram with eval data",
    "chat_examples": "chat conversations streamed",
    "chat_examples_truncated": "conversations that lost turns or tokens to the inputs length",
    "chat_turns_dropped": "history turns dropped from the start of over-long conversations",
    "chat_tokens_cut": "history tokens lost (dropped turns and left-cut last user turns)",
    "enc_dec_turn_examples": "extra encoder-decoder examples, one per earlier assistant turn",
    "enc_dec_turn_tokens_cut": "tokens trimmed from those turns' targets",
    "preference_rows": "preference rows (prompts with their ranked responses) read",
    "preference_pairs": "(chosen, rejected) pairs made from them",
    "preference_prompts_truncated": "pairs whose prompt lost its first tokens to the inputs length",
    "preference_responses_truncated": "pairs with a response cut to the targets length (EOS kept)",
    "preference_pairs_tied": "pairs dropped because chosen and rejected were equal once cut to the targets length",
}

# Packed rows number their examples 1..k (so a row's maximum is its count); unpacked rows are one example each.
TRAINED_SEGMENTS = ("decoder_segment_ids", "encoder_segment_ids")
TRAINED_WEIGHTS = "decoder_loss_weights"


@dataclasses.dataclass
class DedupCounts:
  """One task's deduplication: examples read and dropped, over completed and current epochs."""

  examples: int = 0
  dropped: int = 0
  epochs: int = 0  # completed passes over the task's shard


class StreamStats:
  """The counters of one training stream (see the module docstring)."""

  def __init__(self, tasks: Iterable[seqio.Task] = ()) -> None:
    self._vars = {k: tf.Variable(0, dtype=tf.int64, trainable=False) for k in GRAPH_COUNTERS}
    self.dedup: dict[str, DedupCounts] = {}
    self.packing = PackingStats()
    self.tasks: list[seqio.Task] = []  # the streamed tasks, whose source-skip counters the summary reads
    self.examples_trained = 0  # examples in the batches delivered to training (`delivered`)
    self.carried: dict = {}  # the counts of the runs this one resumes (`carry`)
    self.add_tasks(tasks)

  def carry(self, saved: Iterable[Mapping]) -> None:
    """Adds counts saved by earlier runs (`as_dict`s) to every count reported: counts are cumulative across
    restarts. A restored stream does not count again what it had read before it was saved."""
    for d in saved:
      self.carried = _added(self.carried, {k: v for k, v in d.items() if k != "packing"} | {
          "packing": {k: v for k, v in d.get("packing", {}).items() if k != "efficiency"}})

  def add_tasks(self, tasks: Iterable[seqio.Task]) -> None:
    """Adds tasks of the stream (each once) to those whose source skips are reported."""
    self.tasks += [t for t in tasks if not any(t is s for s in self.tasks)]

  def add(self, counts: Mapping[str, tf.Tensor]) -> list[tf.Operation]:
    """Ops (for inside a tf.data function) that add `counts` to the named in-graph counters."""
    return [self._vars[k].assign_add(tf.cast(v, tf.int64)) for k, v in counts.items()]

  def counted(self, ds: tf.data.Dataset, counts: Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]
              ) -> tf.data.Dataset:
    """`ds` unchanged, adding `counts(example)` to the counters as each example passes."""

    def count(ex):
      with tf.control_dependencies(self.add(counts(ex))):
        return {k: tf.identity(v) for k, v in ex.items()}

    return ds.map(count, num_parallel_calls=tf.data.AUTOTUNE)

  def delivered(self, batch: Mapping[str, np.ndarray]) -> None:
    """Counts the examples of a batch handed to training: segments of packed rows, else rows with a target."""
    segments = next((batch[k] for k in TRAINED_SEGMENTS if k in batch), None)
    if PREFERENCE_IDS in batch:  # pair k's two sequences are segments 2k+1, 2k+2: count pairs
      self.examples_trained += int(((np.asarray(batch[PREFERENCE_IDS]).max(axis=-1) + 1) // 2).sum())
    elif segments is not None:
      self.examples_trained += int(segments.max(axis=-1).sum())
    else:
      self.examples_trained += int((np.asarray(batch[TRAINED_WEIGHTS]) > 0).any(axis=-1).sum())

  def as_dict(self) -> dict:
    out: dict = {k: int(v.numpy()) for k, v in self._vars.items()}
    out["examples_trained"] = self.examples_trained
    out["dedup_examples"] = sum(c.examples for c in self.dedup.values())
    out["dedup_dropped"] = sum(c.dropped for c in self.dedup.values())
    out["dedup_per_task"] = {t: dataclasses.asdict(c) for t, c in sorted(self.dedup.items())}
    # Source filters count per process, over everything read from the tasks' datasets (itjax.data.skips).
    out["source_skipped"] = skips.skip_counts(self.tasks)
    p = self.packing
    out["packing"] = {"examples": p.examples, "rows": p.rows, "tokens": p.tokens, "capacity": p.capacity}
    out = _added(out, self.carried)
    packing = out["packing"]
    packing["efficiency"] = round(packing["tokens"] / packing["capacity"], 4) if packing["capacity"] else 0.0
    return out

  def scalars(self) -> dict[str, float]:
    """The nonzero counts and the packing efficiency as `data/...` scalars (for metrics.jsonl / TensorBoard)."""
    d = self.as_dict()
    out = {f"data/{k}": float(d[k]) for k in (*GRAPH_COUNTERS, "examples_trained", "dedup_examples",
                                               "dedup_dropped") if d[k]}
    if d["source_skipped"]:
      out["data/source_skipped"] = float(skips.total(d["source_skipped"]))
    if d["packing"]["rows"]:
      out["data/packing_efficiency"] = d["packing"]["tokens"] / d["packing"]["capacity"]
    return out

  def summary(self) -> str:
    """One line of the nonzero counts."""
    d = self.as_dict()
    parts = [f"{k}={d[k]:,}" for k in ("examples_trained", *GRAPH_COUNTERS) if d[k]]
    if d["dedup_per_task"]:
      parts.append(f"dedup_dropped={d['dedup_dropped']:,} of {d['dedup_examples']:,}")
    if d["source_skipped"]:
      parts.append("skipped at the source: " + "; ".join(
          f"{ds} {n:,} {reason}" for ds, reasons in d["source_skipped"].items() for reason, n in reasons.items()))
    if (p := d["packing"])["rows"]:
      parts.append(f"packed {p['examples']:,} examples into {p['rows']:,} rows ({p['efficiency']:.1%} non-padding)")
    return "training stream: " + (", ".join(parts) if parts else "nothing dropped, truncated or packed yet")

  def log(self) -> None:
    log.info("%s", self.summary())


def _added(a: Mapping, b: Mapping) -> dict:
  """`a` + `b` for (nested dicts of) counts: numbers add, dicts merge."""
  out = dict(a)
  for k, v in b.items():
    if isinstance(v, Mapping):
      out[k] = _added(out.get(k, {}), v)
    else:
      out[k] = out.get(k, 0) + v
  return out
