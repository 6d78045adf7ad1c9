"""Registering instruction tasks: a source + templates + cluster -> seqio tasks.

One call registers a dataset under every variant (`<dataset>_<variant>`), each
a `seqio.Task` whose examples carry the metadata evaluation needs: task,
dataset, cluster, template_id, variant, options and answer. On the training
split each example is rendered with one template (chosen by a hash of the
example, so deterministically); on eval splits it is rendered with every
template that keeps the task's direction (turned-around templates have no
gold answer to score), so results break down per template as FLAN reports.

What reports and the held-out protocol need to know about a task lives on the
task itself: each is an `InstructionTask`, carrying its `TaskInfo` and its
dataset's source-skip counters (`itjax.data.skips`), so removing a task from
seqio's registry removes its metadata too. `task_info` reads it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import seqio
import tensorflow as tf

from itjax.data import templates as tmpl
from itjax.data.registry import require_task
from itjax.data.skips import SkipCounts
from itjax.data.vocab import REGISTERED

TRAIN_SPLIT = "train"
EXEMPLAR_SEED = 4321
SHOTS = "_shots"  # transient feature: a few-shot example's candidate exemplars
# String features every source must provide besides its template fields.
META_FIELDS = ("answer", "split")
# Token counts before trimming (targets with their EOS), so that the training stream can count truncation.
UNTRIMMED = {"inputs": "inputs_untrimmed_length", "targets": "targets_untrimmed_length"}


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What the held-out protocol and reports need to know about a task."""

  name: str
  dataset: str
  clusters: tuple[str, ...]  # primary cluster first; FLAN lists some datasets in several
  variant: str
  num_templates: int
  has_options: bool
  eval_templates: int  # templates each eval example is rendered with (forward ones)
  chat: bool = False  # a chat task (`itjax.data.chat`): its examples carry the chat loss mask
  # Names of `itjax.eval.metrics` metrics the evaluator computes for this task (beside the task's own seqio
  # `metric_fns`); empty: the evaluator's defaults for the task's cluster.
  metrics: tuple[str, ...] = ()
  truncation: str = "keep_start"  # how over-long inputs are cut (`itjax.data.truncation`)

  @property
  def cluster(self) -> str:
    return self.clusters[0]


class InstructionTask(seqio.Task):
  """A seqio task that carries its `TaskInfo` (`info`) and its dataset's source-skip counters (`skips`).

  Registered with `seqio.TaskRegistry.add(name, task_cls=InstructionTask, info=..., skips=..., ...)`
  (seqio passes the extra keywords on), so the metadata lives and dies with the registered task.
  """

  def __init__(self, *args: Any, info: TaskInfo, skips: SkipCounts, **kwargs: Any) -> None:
    super().__init__(*args, **kwargs)
    if info.name != self.name:
      raise ValueError(f"task {self.name!r} registered with the info of {info.name!r}")
    self.info = info
    self.skips = skips


def task_info(name_or_task: str | seqio.Task) -> TaskInfo | None:
  """The metadata of a task (or registered task name); None for a plain seqio task or a mixture.

  An unknown name is a UserError naming the nearest registered ones.
  """
  task = require_task(name_or_task) if isinstance(name_or_task, str) else name_or_task
  return task.info if isinstance(task, InstructionTask) else None


def output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
  """inputs (no EOS) and targets (EOS appended), tokenized with `vocabulary` (default: the registration bytes;
  a run reads with its own through `itjax.data.vocab.with_vocabulary`)."""
  vocab = vocabulary or REGISTERED
  return {"inputs": seqio.Feature(vocab, add_eos=False), "targets": seqio.Feature(vocab, add_eos=True)}


def record_untrimmed_lengths(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Notes each tokenized example's lengths before any trimming (the seqio preprocessor before the trims).

  The truncation policy itself is seqio's: inputs keep their first `inputs` tokens (few-shot inputs
  lose their oldest exemplar tokens from the left instead), targets their first `targets - 1` and
  the EOS. `itjax.data.pipeline` counts, per example, which of the two were cut.
  """
  return ds.map(lambda ex: {**ex, UNTRIMMED["inputs"]: tf.size(ex["inputs"]),
                            UNTRIMMED["targets"]: tf.size(ex["targets"]) + 1},
                num_parallel_calls=tf.data.AUTOTUNE)


def apply_templates(ds: tf.data.Dataset, *, templates: Sequence[tmpl.Template], variant: str, task: str,
                    dataset: str, cluster: str, exemplars=None, num_shots: int = 0) -> tf.data.Dataset:
  """Renders examples: one template each on train, every template on eval splits.

  Few-shot variants zip each example with `num_shots + 1` candidate exemplars
  from `exemplars()` (the train split, shuffled and repeated).
  """
  if tmpl.is_few_shot(variant):
    pool = exemplars().padded_batch(num_shots + 1, drop_remainder=True)
    ds = tf.data.Dataset.zip(ds, pool).map(lambda ex, shots: {**ex, SHOTS: shots})

  def render_one(ex, i):
    base = {k: v for k, v in ex.items() if k != SHOTS}
    if SHOTS in ex:
      inputs, targets = tmpl.with_exemplars(templates[i], base, ex[SHOTS], variant)
    else:
      inputs, targets = tmpl.render(templates[i], base, variant)
    return {
        "inputs": inputs, "targets": targets, "answer": ex["answer"], "options": ex["options"],
        "task": tf.constant(task), "dataset": tf.constant(dataset), "cluster": tf.constant(cluster),
        "variant": tf.constant(variant), "template_id": tf.constant(i, tf.int32),
    }

  forward = [j for j, t in enumerate(templates) if not t.reverse]
  # Chain of thought reasons towards the answer: turned-around templates do not apply.
  choices = forward if variant == tmpl.CHAIN_OF_THOUGHT else list(range(len(templates)))

  def render_chosen(ex):
    k = tmpl.example_hash({key: v for key, v in ex.items() if key != SHOTS}, len(choices))
    branches = [functools.partial(render_one, ex, j) for j in choices]
    return tf.switch_case(tf.cast(k, tf.int32), branches)

  def render(ex):
    """Every forward template's rendering on eval splits, the chosen one (repeated to the same shape) on train,
    and how many of the rows are real."""
    def train_rows():
      row = render_chosen(ex)
      return {k: tf.repeat(v[None], len(forward), axis=0) for k, v in row.items()}, tf.constant(1, tf.int64)

    def eval_rows():
      rows = [render_one(ex, j) for j in forward]
      return {k: tf.stack([r[k] for r in rows]) for k in rows[0]}, tf.constant(len(forward), tf.int64)

    return tf.cond(tf.equal(ex["split"], TRAIN_SPLIT), train_rows, eval_rows)

  # One pass over the source: render in parallel, then unpack each example's rows in order.
  return ds.map(render, num_parallel_calls=tf.data.AUTOTUNE).flat_map(
      lambda rows, n: tf.data.Dataset.from_tensor_slices(rows).take(n))


def register_instruction_task(dataset: str, cluster: str | Sequence[str], source: seqio.DataSource,
                              templates: Sequence[tmpl.Template], *, fields: Sequence[str], has_options: bool,
                              vocabulary: seqio.Vocabulary | None = None, metric_fns: Sequence = (),
                              shuffle_buffer_size: int = 10_000, preprocessors: Sequence = (),
                              num_shots: int = 0, skips: SkipCounts | None = None) -> list[str]:
  """Registers `<dataset>_<variant>` `InstructionTask`s; returns their names.

  `fields` names the template fields the source (after `preprocessors`, which
  map raw features to fields, "answer", "options" and keep "split") provides;
  they are checked against the templates now, not when data is first read.
  Datasets with answer options get both the with- and without-options
  variants. `skips` are the counters the preprocessors' `counted_filter`s add
  to (a new, empty `SkipCounts` when they count nothing); every variant
  carries them. Registration never reads data.
  """
  tmpl.check_templates(templates, set(fields) | {"answer"}, dataset)
  skips = check_skips(skips, dataset)
  clusters = (cluster,) if isinstance(cluster, str) else tuple(cluster)
  names = []
  has_rationale = "rationale" in fields
  variants = [v for v in tmpl.VARIANTS if (has_options or not tmpl.lists_options(v))
              and (num_shots or not tmpl.is_few_shot(v)) and (has_rationale or v != tmpl.CHAIN_OF_THOUGHT)]

  def exemplars():
    raw = source.get_dataset(split=TRAIN_SPLIT, shuffle=True, seed=EXEMPLAR_SEED)
    for p in preprocessors:
      raw = p(raw)
    return raw.repeat().shuffle(1000, seed=EXEMPLAR_SEED, reshuffle_each_iteration=False)

  for variant in variants:
    name = f"{dataset}_{variant}"
    few = tmpl.is_few_shot(variant)
    info = TaskInfo(name, dataset, clusters, variant, len(templates), has_options,
                    sum(not t.reverse for t in templates))
    seqio.TaskRegistry.add(
        name, task_cls=InstructionTask, info=info, skips=skips, source=source,
        output_features=output_features(vocabulary),
        preprocessors=[
            *preprocessors,
            functools.partial(apply_templates, templates=tuple(templates), variant=variant, task=name,
                              dataset=dataset, cluster=clusters[0], exemplars=exemplars if few else None,
                              num_shots=num_shots),
            seqio.preprocessors.tokenize,
            record_untrimmed_lengths,
            # Few-shot prompts lose their oldest exemplar text first, never the query.
            *([seqio.preprocessors.truncate_inputs_left] if few else []),
            seqio.preprocessors.append_eos_after_trim,
        ],
        metric_fns=list(metric_fns), shuffle_buffer_size=shuffle_buffer_size)
    names.append(name)
  return names


def check_skips(skips: SkipCounts | None, dataset: str) -> SkipCounts:
  """`skips`, or new counters for `dataset`; counters made for another dataset are refused."""
  if skips is None:
    return SkipCounts(dataset)
  if skips.dataset != dataset:
    raise ValueError(f"dataset {dataset!r} registered with the skip counters of {skips.dataset!r}")
  return skips
