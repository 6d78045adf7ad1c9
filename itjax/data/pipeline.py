"""Training batches: seqio tasks -> mixed examples -> [dedup, decontamination] -> model features -> numpy, per host.

Decoder-only models get PrefixLM features (BOS + inputs + targets in one row, loss on the targets
and, for chat, on every assistant turn); encoder-decoders EncDec features (inputs + EOS and targets
packed side by side, with segment ids and positions on both); see
`itjax.data.feature_converters`. Rows are packed best-fit by default (`packer="best_fit"`, about
96% non-padding at the offline default's 96 + 32 tokens against seqio's greedy packer's 73%);
`packer="seqio"` reproduces seqio's own packing.

Mixtures are sampled exactly as `seqio.Mixture.get_dataset` samples them (same rates, seed and
sampler); each task's stream is assembled here so that chat tasks can bring their loss masks into
a mixture, and so that `dedup=True` can drop duplicates per task and pass (`itjax.data.dedup`).

The stream is deterministic given the seed and the host's shard, and every stateful step of it is a
tf.data op (sources are read by position, `itjax.data.row_index`), so a resumed run restores the saved
iterator (`itjax.data.stream_state`) and sees exactly the batches an uninterrupted run would have seen,
at a cost that does not grow with the position. What the stream drops, truncates or pads is counted in a
`StreamStats` (pass one in as `stats` to read it).

Truncation follows seqio (inputs keep their first tokens, few-shot inputs lose their oldest
exemplars from the left, targets keep the EOS; chat histories lose whole turns, `itjax.data.chat`)
and is counted per example: `inputs_truncated`, `targets_truncated` of `examples` streamed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from itjax.data import chat, preference, shared_stream, stream_state  # noqa: E402
from itjax.data import dedup as dedup_lib  # noqa: E402
from itjax.data import truncation as trunc  # noqa: E402
from itjax.data.feature_converters import check_packer, converter_for  # noqa: E402
from itjax.data.jsonl import JsonlSource  # noqa: E402
from itjax.data.quality import NgramIndex  # noqa: E402
from itjax.data.registry import require_task  # noqa: E402
from itjax.data.stream_state import SideState  # noqa: E402
from itjax.data.stream_stats import StreamStats  # noqa: E402
from itjax.data.tasks import TRAIN_SPLIT, UNTRIMMED, task_info  # noqa: E402
from itjax.data.vocab import with_vocabulary  # noqa: E402
from itjax.errors import UserError  # noqa: E402
from itjax.models.features import PREFIX_LM_LAYOUT, FeatureLayout  # noqa: E402

log = logging.getLogger("itjax")
TEXT_FEATURES = ("inputs_pretokenized", "targets_pretokenized")
# Examples held in all the tasks' shuffle buffers together. seqio repeats a task before shuffling it,
# so a buffer fills completely before the task yields its first example, and every task's buffer
# fills at start-up: with a budget, start-up no longer grows with the task count (1,000 tasks x
# 10,000 examples would be 10M examples preprocessed before the first step).
SHUFFLE_BUDGET = 65_536
MIN_SHUFFLE_BUFFER = 16
CHAT_COUNTS = (chat.TURNS_DROPPED, chat.TOKENS_CUT)


def _counts(ex: Mapping[str, tf.Tensor], *, lengths: Mapping[str, int], is_chat: bool) -> dict[str, tf.Tensor]:
  """What one streamed example adds to the counters: itself, whether it was truncated, chat cuts."""
  out = {"examples": 1}
  for key, feature in UNTRIMMED.items():
    if feature in ex and lengths.get(key):  # tasks registered through itjax.data.tasks record their lengths
      out[f"{key}_truncated"] = tf.cast(ex[feature] > lengths[key], tf.int64)
  if is_chat:
    out.update({"chat_examples": 1, "chat_turns_dropped": ex[chat.TURNS_DROPPED],
                "chat_tokens_cut": ex[chat.TOKENS_CUT],
                "chat_examples_truncated": tf.cast(ex[chat.TURNS_DROPPED] + ex[chat.TOKENS_CUT] > 0, tf.int64)})
  return out


def _is_chat(task: seqio.Task) -> bool:
  """Whether `task` is a chat task (its examples carry LOSS_MASK)."""
  info = task_info(task)
  return info is not None and info.chat


def shuffle_buffer(task: seqio.Task, num_tasks: int, budget: int = SHUFFLE_BUDGET) -> int | None:
  """The task's shuffle buffer in a stream of `num_tasks`: its own, at most one epoch of its training
  examples (a larger buffer only mixes repeated epochs) and at most its share of `budget`."""
  own = task.shuffle_buffer_size
  if own is None:
    return None
  size = min(own, max(MIN_SHUFFLE_BUFFER, budget // max(num_tasks, 1)))
  n = task.source.num_input_examples(TRAIN_SPLIT) if TRAIN_SPLIT in task.splits else None
  return max(1, min(size, n)) if n else size


def _select(ex: Mapping[str, tf.Tensor], *, is_chat: bool, with_mask: bool, keep_text: bool) -> dict[str, tf.Tensor]:
  """What a task's stream keeps of an example: inputs, targets [, LOSS_MASK] [, texts]."""
  out = {"inputs": ex["inputs"], "targets": ex["targets"]}
  if with_mask:  # a mixture with chat tasks: every example carries a mask (zeros: targets-only loss)
    out[chat.LOSS_MASK] = ex[chat.LOSS_MASK] if is_chat else tf.zeros_like(ex["inputs"])
  if keep_text:
    out.update({k: ex[k] for k in TEXT_FEATURES})
  return out


def _check_not_empty(task: seqio.Task) -> None:
  """A task with no training example is a UserError naming it (and its files' reports): its stream would end
  at once, and a mixture would silently train without it."""
  if TRAIN_SPLIT not in task.splits or task.source.num_input_examples(TRAIN_SPLIT) != 0:
    return
  detail = ""
  if isinstance(task.source, JsonlSource):
    reports = task.source.validate_split(TRAIN_SPLIT)
    detail = ": " + "; ".join(str(r).replace("\n", " ") for r in reports[:3]) + ("; ..." if len(reports) > 3 else "")
  raise UserError(f"task {task.name!r} has no training examples{detail}")


def _task_stream(task: seqio.Task, lengths: Mapping[str, int], *, seed: int, shard_info: seqio.ShardInfo,
                 use_cached: bool, keep_text: bool, with_mask: bool, dedup: bool,
                 stats: StreamStats, buffer: int | None, side_state: list[SideState] | None = None) -> tf.data.Dataset:
  """One task's infinite, shuffled training examples: inputs, targets [, LOSS_MASK] [, texts]."""
  is_chat = _is_chat(task)
  keep = ("inputs", "targets", *UNTRIMMED.values()) + ((chat.LOSS_MASK, *CHAT_COUNTS) if is_chat else ()) + (
      TEXT_FEATURES if keep_text else ())
  if dedup:
    ds = dedup_lib.deduplicated(task, lengths, keep=(*keep, *TEXT_FEATURES), seed=seed, shard_info=shard_info,
                                use_cached=use_cached, stats=stats, side_state=side_state)
  else:
    ds = task.get_dataset(lengths, split=TRAIN_SPLIT, shuffle=True, num_epochs=None, seed=seed,
                          use_cached=use_cached, shard_info=shard_info, shuffle_buffer_size=buffer)
  ds = stats.counted(ds, functools.partial(_counts, lengths=lengths, is_chat=is_chat))
  return ds.map(functools.partial(_select, is_chat=is_chat, with_mask=with_mask, keep_text=keep_text),
                num_parallel_calls=tf.data.AUTOTUNE)


def _text_stream(task: seqio.Task, lengths: Mapping[str, int], *, seed: int, shard_info: seqio.ShardInfo,
                 buffer: int | None) -> tf.data.Dataset:
  """One task's infinite, shuffled rendered text: its preprocessors up to its `TokenizeAndCut`, which the mixture
  applies once after sampling (`_shared_tail`). Shuffled exactly where seqio shuffles it: the tail is element-wise."""
  head = copy.copy(task)  # the same source and metadata, without the tail, validated as text
  head._preprocessor_constructor_args = tuple(task.preprocessors[:-1])  # noqa: SLF001
  head.__dict__.pop("preprocessors", None)  # seqio caches the list it validated
  head._output_features = {k: dataclasses.replace(f, dtype=tf.string, rank=0)  # noqa: SLF001
                           for k, f in task.output_features.items()}
  ds = head.get_dataset(lengths, split=TRAIN_SPLIT, shuffle=True, num_epochs=None, seed=seed, shard_info=shard_info,
                        shuffle_buffer_size=buffer, trim_output_features=False)
  keep = ("inputs", "targets", *(trunc.PIECES if trunc.cut_field(trunc.tail(task).policy) else ()))
  return ds.map(tf.autograph.experimental.do_not_convert(lambda ex: {k: ex[k] for k in keep}))


def _shared_tail(ds: tf.data.Dataset, task: seqio.Task, lengths: Mapping[str, int], *, with_mask: bool,
                 keep_text: bool, stats: StreamStats) -> tf.data.Dataset:
  """Mixed text of tasks sharing `task`'s tail and features -> tokenized, cut, counted examples, as `_task_stream`."""
  features = task.output_features
  ds = dataclasses.replace(trunc.tail(task), output_features=features, sequence_length=lengths)(ds)
  ds = seqio.utils.trim_dataset(ds, lengths, features)  # what seqio's Task.get_dataset does after preprocessing
  ds = stats.counted(ds, functools.partial(_counts, lengths=lengths, is_chat=False))
  return ds.map(functools.partial(_select, is_chat=False, with_mask=with_mask, keep_text=keep_text),
                num_parallel_calls=tf.data.AUTOTUNE)


def _tail_key(task: seqio.Task) -> tuple:
  """Tasks with equal keys can share one tail: the same policy and output features (vocabulary, EOS)."""
  return trunc.tail(task).policy, tuple(task.output_features.items())


def train_examples(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], *, seed: int,
                   shard_index: int = 0, num_shards: int = 1, use_cached: bool = False, keep_text: bool = False,
                   dedup: bool = False, stats: StreamStats | None = None,
                   vocabulary: seqio.Vocabulary | None = None, truncation: str = trunc.KEEP_START,
                   shuffle_budget: int = SHUFFLE_BUDGET, side_state: list[SideState] | None = None) -> tf.data.Dataset:
  """The mixed, infinite training examples (token ids, before feature conversion) of this host's shard.

  Without chat tasks and dedup, and with the tasks' shuffle buffers within `shuffle_budget`
  (`shuffle_buffer`), this is `seqio.get_mixture_or_task(name).get_dataset(...)` example for
  example; chat tasks add LOSS_MASK to every example, `keep_text` the pretokenized texts. Every task
  is tokenized with `vocabulary` (default: as registered) and cut by its truncation policy
  (`truncation` for tasks that registered none).

  Start-up: a mixture's tasks that end with the same `TokenizeAndCut` (the same policy and features) are
  sampled as rendered text and tokenized, cut and counted once, after sampling: building a task's stream
  then traces only its rendering, and only the examples drawn are tokenized (a shuffle buffer holds
  text). When all tasks share it this is still seqio's stream. JSONL tasks with a shared rendering go
  further: one Python-sampled stream serves them all (`itjax.data.shared_stream`: same rows and rates, its
  own random sequence), so building it does not grow with their number. Tasks in several such groups
  (several policies or renderings, chat tasks) are sampled in two steps, the group by its tasks' total
  rate, then the task in it: the same rate per task.
  """
  provider = require_task(mixture_or_task_name)
  stats = stats if stats is not None else StreamStats()
  shard_info = seqio.ShardInfo(shard_index, num_shards)
  tasks = [provider] if isinstance(provider, seqio.Task) else [t for t in provider.tasks if "train" in t.splits]
  stats.add_tasks(tasks)
  with_mask = any(_is_chat(t) for t in tasks)
  read = [trunc.with_default(t if vocabulary is None else with_vocabulary(t, vocabulary), truncation) for t in tasks]
  lengths = dict(task_feature_lengths)
  sizing, progress = _Progress("sizing the training tasks (validating files not in the scan cache)"), _Progress()
  buffers = []
  for t in read:
    _check_not_empty(t)
    buffers.append(shuffle_buffer(t, len(read), shuffle_budget))
    sizing(len(buffers), len(read))

  def own(i):
    return _task_stream(read[i], lengths, seed=seed, shard_info=shard_info, use_cached=use_cached,
                        keep_text=keep_text, with_mask=with_mask, dedup=dedup, stats=stats, buffer=buffers[i],
                        side_state=side_state)

  if isinstance(provider, seqio.Task):
    return own(0)
  rates = [provider.get_rate(t) for t in tasks]
  sample = provider._sample_fn  # noqa: SLF001  (seqio's sampler: Mixture.get_dataset calls the same attribute)
  shares = not dedup and not use_cached
  groups: list[tuple[tuple, list[int]]] = []  # (tail key, task indices); None key: a task with its own stream
  for i, t in enumerate(read):
    key = None
    if shares and trunc.tail(t) is not None and not _is_chat(t):
      shared = shared_stream.shared_key(t)
      key = ("tail", _tail_key(t)) if shared is None else ("shared", shared, _tail_key(t))
    group = next((g for k, g in groups if key is not None and k == key), None)
    if group is None:
      groups.append((key, group := []))
    group.append(i)
  parts, part_rates, built = [], [], 0
  for g, (key, members) in enumerate(groups):
    group_seed = seed if len(groups) == 1 else seed + 1 + g
    if key is None:
      parts.append(own(members[0]))
    else:
      if key[0] == "shared":
        mixed = shared_stream.text_stream([read[i] for i in members], [rates[i] for i in members],
                                          seed=group_seed, shard_info=shard_info)
      else:
        texts = []
        for i in members:
          texts.append(_text_stream(read[i], lengths, seed=seed, shard_info=shard_info, buffer=buffers[i]))
          progress(built + len(texts), len(read))
        mixed = texts[0] if len(texts) == 1 else sample(texts, [rates[i] for i in members], group_seed)
      parts.append(_shared_tail(mixed, read[members[0]], lengths, with_mask=with_mask, keep_text=keep_text,
                                stats=stats))
    built += len(members)
    part_rates.append(sum(rates[i] for i in members))
    progress(built, len(read))
  # seqio's sampler with the mixture's rates and our seed.
  return parts[0] if len(parts) == 1 else sample(parts, part_rates, seed)


def train_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                  seed: int, shard_index: int = 0, num_shards: int = 1, pack: bool = True,
                  start_batch: int = 0, use_cached: bool = False,
                  decontaminate: NgramIndex | None = None, layout: FeatureLayout = PREFIX_LM_LAYOUT,
                  packer: str = "best_fit", dedup: bool = False, stats: StreamStats | None = None,
                  vocabulary: seqio.Vocabulary | None = None, truncation: str = trunc.KEEP_START,
                  side_state: list[SideState] | None = None, pairs: bool = False) -> tf.data.Dataset:
  """This host's infinite stream of [batch_size, length] batches of a model's features (`layout`, from its
  interface: decoder-only PrefixLM rows by default), from batch `start_batch` on (by replaying the batches
  before it; `stream_state` restores a position instead, at a cost that does not grow with it).

  With `decontaminate`, examples sharing an n-gram with the indexed eval data are dropped before
  packing (counted in `stats`; `itjax.data.quality.scan` counts them offline). With `dedup`,
  normalized-text duplicates are dropped per task and pass (`itjax.data.dedup`). `packer` is
  "best_fit" (default) or "seqio"; it applies when `pack`. With `pairs` (an objective that trains on preference
  pairs), the batches are `itjax.data.preference` rows of the mixture's preference tasks.
  """
  tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators that JAX owns
  check_packer(packer)
  if pairs:
    if dedup or decontaminate is not None:
      raise UserError("preference streams are neither deduplicated nor decontaminated: unset "
                      "stream_settings.dedup / decontaminate for this objective")
    ds = preference.preference_dataset(mixture_or_task_name, task_feature_lengths, batch_size, seed=seed,
                                       shard_index=shard_index, num_shards=num_shards, layout=layout, stats=stats,
                                       vocabulary=vocabulary)
    return ds.with_options(stream_state.iterator_options()).skip(start_batch).prefetch(4)
  lengths = dict(task_feature_lengths)
  stats = stats if stats is not None else StreamStats()
  ds = train_examples(mixture_or_task_name, layout.task_lengths(lengths), seed=seed,
                      shard_index=shard_index, num_shards=num_shards,
                      use_cached=use_cached, keep_text=decontaminate is not None, dedup=dedup, stats=stats,
                      vocabulary=vocabulary, truncation=truncation, side_state=side_state)
  if decontaminate is not None:
    def clean(ex):
      # The untruncated texts (as `quality.scan` reads them); decoding token ids would stop at a chat's first EOS.
      text = tf.strings.join([ex["inputs_pretokenized"], "\n", ex["targets_pretokenized"]])
      keep = tf.logical_not(decontaminate.tf_contaminated(text))
      with tf.control_dependencies(stats.add({"decontaminated": tf.cast(tf.logical_not(keep), tf.int64)})):
        return tf.identity(keep)

    ds = ds.filter(clean).map(lambda ex: {k: v for k, v in ex.items() if k not in TEXT_FEATURES})
  ds = converter_for(layout, pack, packer=packer, stats=stats)(ds, lengths)
  keep = layout.feature_keys
  ds = ds.map(lambda ex: {k: ex[k] for k in keep if k in ex})
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.with_options(stream_state.iterator_options()).skip(start_batch).prefetch(4)


def validation_rows(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                    split: str, layout: FeatureLayout = PREFIX_LM_LAYOUT, vocabulary: seqio.Vocabulary | None = None,
                    truncation: str = trunc.KEEP_START) -> tf.data.Dataset:
  """One pass over `split` of the tasks' examples (in task, then file order), as unpacked rows of a model's
  features in batches (the last one possibly smaller): what a training objective's held-out metrics read."""
  tf.config.set_visible_devices([], "GPU")
  provider = require_task(mixture_or_task_name)
  tasks = [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)
  parts = []
  for t in tasks:
    if split not in t.splits:
      raise UserError(f"task {t.name!r} has no {split!r} split (splits: {', '.join(t.splits)})")
    t = trunc.with_default(t if vocabulary is None else with_vocabulary(t, vocabulary), truncation)
    ds = t.get_dataset(layout.task_lengths(task_feature_lengths), split=split, shuffle=False, num_epochs=1)
    parts.append(ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]}))
  ds = functools.reduce(lambda a, b: a.concatenate(b), parts)
  ds = converter_for(layout, False)(ds, dict(task_feature_lengths))
  keep = [k for k in layout.feature_keys if k in ds.element_spec]
  return ds.map(lambda ex: {k: ex[k] for k in keep}).batch(batch_size)


def numpy_batches(ds: tf.data.Dataset, stats: StreamStats | None = None,
                  side_state: Sequence[SideState] = ()) -> stream_state.ShardStream:
  """The batches as numpy (`stream_state.ShardStream`: its position can be saved and restored); each one delivered
  adds its examples to `stats.examples_trained`. `side_state`: what `train_dataset` collected in its own."""
  return stream_state.ShardStream(ds, stats, side_state)


class _Progress:
  """Logs how many tasks a start-up phase has done, at most every `every` seconds (large mixtures)."""

  def __init__(self, what: str = "building the training stream", every: float = 10.0):
    self.what, self.every, self.start, self.last = what, every, time.monotonic(), time.monotonic()

  def __call__(self, done: int, total: int) -> None:
    now = time.monotonic()
    if total > 1 and (now - self.last >= self.every or (done == total and now - self.start >= self.every)):
      self.last = now
      log.info("%s: %d of %d tasks (%.0f s)", self.what, done, total, now - self.start)
