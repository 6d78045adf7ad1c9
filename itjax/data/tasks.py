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
from collections.abc import Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from itjax.data import templates as tmpl
from itjax.data import truncation as trunc
from itjax.data.registry import require_task
from itjax.data.skips import SkipCounts
from itjax.data.vocab import REGISTERED
from itjax.errors import UserError

TRAIN_SPLIT = "train"
EXEMPLAR_SEED = 4321
SHOTS = "_shots"  # transient feature: a few-shot example's candidate exemplars
# String features every source must provide besides its template fields.
META_FIELDS = ("answer", "split")
UNTRIMMED = trunc.UNTRIMMED


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
  truncation: str | None = None  # how over-long inputs are cut (`itjax.data.truncation`); None: the run's default

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


def _render_one(template: tmpl.Template, ex: Mapping[str, tf.Tensor], variant: str, index: int,
                field: str | None) -> dict[str, tf.Tensor]:
  """One template's rendering of `ex`; with `field`, also the prompt's pieces around it (`trunc.PIECES`)."""
  inputs, targets = tmpl.render(template, ex, variant)
  row = {"inputs": inputs, "targets": targets, "answer": ex["answer"], "options": ex["options"],
         "template_id": tf.constant(index, tf.int32)}
  if field is None:
    return row
  if field in template.fields() and field in ex:
    # Render with a sentinel in place of the field and split around it; usable only when the pieces
    # joined with the field give back the prompt exactly (stripping may differ at the edges).
    marked, _ = tmpl.render(template, {**ex, field: tf.constant(_SENTINEL)}, variant)
    parts = tf.strings.split(marked, _SENTINEL)
    ok = tf.equal(tf.size(parts), 2)
    before = tf.cond(ok, lambda: parts[0], lambda: inputs)
    after = tf.cond(ok, lambda: parts[-1], lambda: tf.constant(""))
    ok = ok & tf.equal(tf.strings.join([before, ex[field], after]), inputs)
    value = tf.where(ok, ex[field], "")
    before = tf.where(ok, before, inputs)
    after = tf.where(ok, after, "")
  else:
    before, value, after = inputs, tf.constant(""), tf.constant("")
  return {**row, **dict(zip(trunc.PIECES, (before, value, after), strict=True))}


_SENTINEL = "\x00"


@functools.cache
def _zero_shot_renderer(templates: tuple[tmpl.Template, ...], variant: str, field: str | None):
  """The rendering of a zero-shot variant as one traced function, shared by every task with these templates.

  Mixtures of hundreds of tasks trace their graphs once per template set instead of once per task
  (tracing dominates start-up); the task's own constants are added outside it.
  """
  forward = [j for j, t in enumerate(templates) if not t.reverse]
  # Chain of thought reasons towards the answer: turned-around templates do not apply.
  choices = forward if variant == tmpl.CHAIN_OF_THOUGHT else list(range(len(templates)))

  def one(ex, j):
    return _render_one(templates[j], ex, variant, j, field)

  def render(ex):
    return _rows_by_split(ex, one, choices, forward, ex)

  return tf.function(render, autograph=False, reduce_retracing=True)


def _rows_by_split(ex, one, choices: Sequence[int], forward: Sequence[int], identity) -> tuple[dict, tf.Tensor]:
  """Every forward template's rendering `one(ex, j)` on eval splits, on train the one chosen by a hash of
  `identity` among `choices` (repeated to the same shape), and how many of the rows are real."""
  def train_rows():
    k = tmpl.example_hash(identity, len(choices))
    row = tf.switch_case(tf.cast(k, tf.int32), [functools.partial(one, ex, j) for j in choices])
    return {key: tf.repeat(v[None], len(forward), axis=0) for key, v in row.items()}, tf.constant(1, tf.int64)

  def eval_rows():
    rows = [one(ex, j) for j in forward]
    return {key: tf.stack([r[key] for r in rows]) for key in rows[0]}, tf.constant(len(forward), tf.int64)

  return tf.cond(tf.equal(ex["split"], TRAIN_SPLIT), train_rows, eval_rows)


class SharedRendering:
  """A rendering that tasks can share in one training stream (`itjax.data.shared_stream`): tasks whose
  renderings have equal `shared_key` render a training example alike, by `train_text`, without their own
  constants (task name, cluster), which training does not read."""

  @property
  def shared_key(self) -> tuple:
    raise NotImplementedError

  def train_text(self, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """inputs, targets (and `trunc.PIECES` when cutting a field) of one training example."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ZeroShotRendering(SharedRendering):
  """The seqio preprocessor of a zero-shot variant (`apply_templates`)."""

  templates: tuple[tmpl.Template, ...]
  variant: str
  task: str
  dataset: str
  cluster: str
  cut_field: str | None = None

  def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    return apply_templates(ds, templates=self.templates, variant=self.variant, task=self.task, dataset=self.dataset,
                           cluster=self.cluster, cut_field=self.cut_field)

  @property
  def shared_key(self) -> tuple:
    return "zero_shot", self.templates, self.variant, self.cut_field

  def train_text(self, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    rows, _ = _zero_shot_renderer(self.templates, self.variant, self.cut_field)(ex)
    keys = ("inputs", "targets", *(trunc.PIECES if self.cut_field else ()))
    return {k: rows[k][0] for k in keys}


def apply_templates(ds: tf.data.Dataset, *, templates: Sequence[tmpl.Template], variant: str, task: str,
                    dataset: str, cluster: str, exemplars=None, num_shots: int = 0,
                    cut_field: str | None = None) -> tf.data.Dataset:
  """Renders examples: one template each on train, every template on eval splits.

  Few-shot variants zip each example with `num_shots + 1` candidate exemplars
  from `exemplars()` (the train split, shuffled and repeated). With `cut_field`, rows also carry
  the prompt's pieces around that field, for `itjax.data.truncation`.
  """
  constants = {"task": task, "dataset": dataset, "cluster": cluster, "variant": variant}
  if tmpl.is_few_shot(variant):
    return _few_shot(ds, templates=templates, variant=variant, constants=constants, exemplars=exemplars,
                     num_shots=num_shots)
  shared = _zero_shot_renderer(tuple(templates), variant, cut_field)

  @tf.autograph.experimental.do_not_convert
  def render(ex):
    rows, n = shared(ex)
    width = tf.shape(rows["inputs"])[:1]
    return {**rows, **{k: tf.fill(width, v) for k, v in constants.items()}}, n

  # One pass over the source: render in parallel, then unpack each example's rows in order.
  return ds.map(render, num_parallel_calls=tf.data.AUTOTUNE).flat_map(
      lambda rows, n: tf.data.Dataset.from_tensor_slices(rows).take(n))


def _few_shot(ds: tf.data.Dataset, *, templates: Sequence[tmpl.Template], variant: str, constants: Mapping[str, str],
              exemplars, num_shots: int) -> tf.data.Dataset:
  """Few-shot rendering: each example with its exemplars, one template on train, every forward one on eval."""
  pool = exemplars().padded_batch(num_shots + 1, drop_remainder=True)
  ds = tf.data.Dataset.zip(ds, pool).map(lambda ex, shots: {**ex, SHOTS: shots})
  forward = [j for j, t in enumerate(templates) if not t.reverse]

  def one(ex, i):
    base = {k: v for k, v in ex.items() if k != SHOTS}
    inputs, targets = tmpl.with_exemplars(templates[i], base, ex[SHOTS], variant)
    return {"inputs": inputs, "targets": targets, "answer": ex["answer"], "options": ex["options"],
            "template_id": tf.constant(i, tf.int32), **{k: tf.constant(v) for k, v in constants.items()}}

  def render(ex):
    return _rows_by_split(ex, one, range(len(templates)), forward, {k: v for k, v in ex.items() if k != SHOTS})

  return ds.map(render, num_parallel_calls=tf.data.AUTOTUNE).flat_map(
      lambda rows, n: tf.data.Dataset.from_tensor_slices(rows).take(n))


def register_instruction_task(dataset: str, cluster: str | Sequence[str], source: seqio.DataSource,
                              templates: Sequence[tmpl.Template], *, fields: Sequence[str], has_options: bool,
                              vocabulary: seqio.Vocabulary | None = None, metric_fns: Sequence = (),
                              shuffle_buffer_size: int = 10_000, preprocessors: Sequence = (),
                              num_shots: int = 0, skips: SkipCounts | None = None, truncation: str | None = None,
                              metrics: Sequence[str] = ()) -> list[str]:
  """Registers `<dataset>_<variant>` `InstructionTask`s; returns their names.

  `fields` names the template fields the source (after `preprocessors`, which
  map raw features to fields, "answer", "options" and keep "split") provides;
  they are checked against the templates now, not when data is first read.
  Datasets with answer options get both the with- and without-options
  variants. `skips` are the counters the preprocessors' `counted_filter`s add
  to (a new, empty `SkipCounts` when they count nothing); every variant
  carries them. `truncation` says how over-long prompts are cut (`itjax.data.truncation`; None:
  the run's default); `metrics` names the `itjax.eval.metrics` the evaluator computes (default: by
  cluster). Registration never reads data.
  """
  tmpl.check_templates(templates, set(fields) | {"answer"}, dataset)
  trunc.check_policy(truncation, f"task {dataset!r}: truncation")
  field = trunc.cut_field(truncation)
  if field and not any(field in t.fields() for t in templates):
    raise UserError(f"task {dataset!r}: truncation={truncation!r} but no template uses {{{field}}}")
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
    # Few-shot prompts lose their oldest exemplar text first, never the query.
    policy = trunc.KEEP_END if few else truncation
    info = TaskInfo(name, dataset, clusters, variant, len(templates), has_options,
                    sum(not t.reverse for t in templates), metrics=tuple(metrics), truncation=policy)
    seqio.TaskRegistry.add(
        name, task_cls=InstructionTask, info=info, skips=skips, source=source,
        output_features=output_features(vocabulary),
        preprocessors=[
            *preprocessors,
            functools.partial(apply_templates, templates=tuple(templates), variant=variant, task=name,
                              dataset=dataset, cluster=clusters[0], exemplars=exemplars, num_shots=num_shots)
            if few else ZeroShotRendering(tuple(templates), variant, name, dataset, clusters[0], field),
            trunc.TokenizeAndCut(policy),
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
