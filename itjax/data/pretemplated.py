"""Pre-templated files as the templates of one dataset (P3-style `<dataset>_<template>.jsonl`).

P3 and similar collections ship each dataset already rendered, one file per prompt template. Registered as
one JSONL task per file, every file would be its own dataset with one template, and per-template scores
and the mean / best-template columns of reports would mean nothing. `register_pretemplated_dataset`
registers the files as one dataset instead: `<dataset>_zs_noopt` (and `<dataset>_zs_opt` with answer
options) whose examples carry `template_id` = the file's index, with `TaskInfo.num_templates` and
`eval_templates` the number of files. Lines are used as rendered (the prompt is the input; `_zs_opt`
appends FLAN's OPTIONS list, even where a prompt already lists its choices): on the train split every
line of every file is one training example, on eval splits each file's lines are that template's rows.
Files are read in turns (line i of every file, then line i + 1), so rows of one example under every
template come together when the files are aligned, and an evaluation capped at n examples per task
(n x templates rows) sees every template.

Splits: either all lines belong to one split (`splits="test"`) or each file is sliced by ratio
(`itjax.data.splits`) with `group_key="passage"` by default, so that the renderings of one passage under
different templates land on the same side. Options are per template, since each template has its own
verbalizer ("Positive" in one, "increase" in another): one label set for all, `"from_answers"` (each
file's own train answers, at most `MAX_DERIVED_OPTIONS`), a mapping template -> either (None: no
options for that template, e.g. a generative one) or a per-line `options_field`.

`group_files` sorts a directory of `<dataset>_<template>.jsonl` files by dataset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from itjax.data import jsonl
from itjax.data import splits as splits_lib
from itjax.data import templates as tmpl
from itjax.data import truncation as trunc
from itjax.data.tasks import InstructionTask, SharedRendering, TaskInfo, check_skips, output_features
from itjax.errors import UserError

UNMATCHED = ("raise", "ignore")
OptionSpec = Sequence[str] | str | None  # a label set, jsonl.FROM_ANSWERS, or no options


def group_files(files: str | os.PathLike | Iterable[str | os.PathLike], datasets: Iterable[str], *,
                unmatched: str = "raise") -> dict[str, dict[str, str]]:
  """{dataset: {template: path}} for `<dataset>_<template>.jsonl` files (a directory's, or a list), sorted by name.

  Dataset names contain underscores, so the split needs the known names: a file belongs to the longest of
  `datasets` that its name starts with, followed by "_" (given "adversarial_qa" and "adversarial_qa_dbert",
  `adversarial_qa_dbert_based_on.jsonl` is template "based_on" of "adversarial_qa_dbert"). A file matching no
  name is a UserError (`unmatched="raise"`) or left out ("ignore"); known names without files are absent.
  """
  if unmatched not in UNMATCHED:
    raise UserError(f"unmatched must be one of {', '.join(UNMATCHED)}, got {unmatched!r}")
  if isinstance(files, str | os.PathLike):
    directory = os.fspath(files)
    if not os.path.isdir(directory):
      raise UserError(f"{directory}: not a directory")
    paths = [os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".jsonl")]
  else:
    paths = [os.fspath(p) for p in files]
  names = sorted(set(datasets), key=len, reverse=True)
  out: dict[str, dict[str, str]] = {}
  missing = []
  for path in sorted(paths):
    stem = os.path.basename(path).removesuffix(".jsonl")
    dataset = next((d for d in names if stem.startswith(d + "_") and len(stem) > len(d) + 1), None)
    if dataset is None:
      missing.append(os.path.basename(path))
      continue
    out.setdefault(dataset, {})[stem[len(dataset) + 1:]] = path
  if missing and unmatched == "raise":
    raise UserError(f"{len(missing)} file(s) match no known dataset name (<dataset>_<template>.jsonl): "
                    f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''} (pass unmatched='ignore' to leave "
                    "them out)")
  return {d: dict(sorted(t.items())) for d, t in sorted(out.items())}


class PretemplatedSource(jsonl.JsonlSource):
  """One dataset's pre-templated files: file i holds template i's renderings, read in turns, tagged `template_id`."""

  def __init__(self, templates: Mapping[str, str], fmt: str, *, options: Mapping[str, OptionSpec],
               options_field: str | None = None, splits: Mapping[str, float] | str = "train",
               group_key: splits_lib.GroupKey = splits_lib.PASSAGE, split_seed: int = 0, on_error: str = "raise",
               max_chars: int | None = jsonl.DEFAULT_MAX_CHARS):
    self.templates = dict(templates)
    files = list(self.templates.values())
    if len(set(files)) != len(files):
      raise UserError("pre-templated dataset: a file is listed under two template names")
    self._ids = {p: i for i, p in enumerate(files)}
    self._specs = {self.templates[t]: jsonl.check_options(o, options_field, fmt, f"template {t!r}")
                   for t, o in options.items()}
    sliced = not isinstance(splits, str)
    super().__init__(files if sliced else {splits: files}, fmt, on_error=on_error, max_chars=max_chars,
                     options_field=options_field, splits=splits if sliced else None,
                     group_key=group_key if sliced else None, split_seed=split_seed)

  @property
  def has_options(self) -> bool:
    return self.options_field is not None or any(s is not None for s in self._specs.values())

  def _option_spec(self, path: str) -> tuple[str, ...] | str | None:
    return self._specs[path]

  def _uses_from_answers(self) -> bool:
    return any(s == jsonl.FROM_ANSWERS for s in self._specs.values())

  def _derive_files(self, path: str) -> list[str]:
    return [path]  # each template's own verbalizer

  def _template_id(self, path: str) -> int | None:
    return self._ids[path]

  def _interleaved(self) -> bool:
    return True


def _per_template_options(options: OptionSpec | Mapping[str, OptionSpec], names: Sequence[str]
                          ) -> dict[str, OptionSpec]:
  if not isinstance(options, Mapping):
    return {n: options for n in names}
  unknown, missing = sorted(set(options) - set(names)), [n for n in names if n not in options]
  if unknown or missing:
    raise UserError(f"options: a mapping must name every template exactly (None: no options for it); "
                    f"unknown: {', '.join(unknown) or 'none'}; missing: {', '.join(missing) or 'none'}")
  return {n: options[n] for n in names}


@dataclasses.dataclass(frozen=True)
class PretemplatedRendering(SharedRendering):
  """The seqio preprocessor of a pre-templated task: one row per line, as rendered (`template` maps the format's
  fields to the prompt), with its template id. The prompt's trailing newline is dropped first, so that
  `_zs_opt`'s OPTIONS list follows one blank line."""

  template: tmpl.Template
  variant: str
  task: str
  dataset: str
  cluster: str

  @property
  def shared_key(self) -> tuple:
    return "pretemplated", self.template, self.variant

  def train_text(self, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    ex = {**ex, "instruction": tf.strings.strip(ex["instruction"])}
    inputs, targets = tmpl.render(self.template, ex, self.variant)
    return {"inputs": inputs, "targets": targets}

  def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    constants = {"task": self.task, "dataset": self.dataset, "cluster": self.cluster, "variant": self.variant}

    @tf.autograph.experimental.do_not_convert  # plain graph code; converting costs ~0.1 s per task at start-up
    def one(ex):
      return {**self.train_text(ex), "answer": ex["answer"], "options": ex["options"],
              "template_id": ex[jsonl.TEMPLATE_ID], **{k: tf.constant(v) for k, v in constants.items()}}

    return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)


def register_pretemplated_dataset(dataset: str, files: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                                  *, cluster: str | Sequence[str], fmt: str = "prompt_completion",
                                  splits: Mapping[str, float] | str = "train",
                                  group_key: splits_lib.GroupKey = splits_lib.PASSAGE, split_seed: int = 0,
                                  options: OptionSpec | Mapping[str, OptionSpec] = None,
                                  options_field: str | None = None, on_error: str = "raise",
                                  max_chars: int | None = jsonl.DEFAULT_MAX_CHARS, metrics: Sequence[str] = (),
                                  truncation: str | None = None, vocabulary: seqio.Vocabulary | None = None,
                                  metric_fns: Sequence = (), shuffle_buffer_size: int = 10_000) -> list[str]:
  """Registers pre-templated `files` (one per template) as `<dataset>_zs_noopt` (+ `_zs_opt` with options).

  `files`: paths (template names are the file names without .jsonl) or {template name: path}; template ids
  follow their order. `splits`: a split name all lines belong to, or ratios slicing every file
  (`itjax.data.splits`, by `group_key`, "passage" by default). `options`: None, a label set, "from_answers"
  (each file's train answers), or {template: one of those}; or `options_field` for choices per line.
  `truncation`: how over-long prompts are cut (`itjax.data.truncation`; None: the run's default; "keep_both_ends"
  suits prompts that ask their question after the passage); `metrics`: the `itjax.eval.metrics` to compute. Lines
  in the prompt_completion format are used as rendered; alpaca / dolly lines with the Alpaca format. Registration
  reads nothing; returns the task names.
  """
  if fmt == "chat" or fmt not in jsonl.FORMATS:
    raise UserError(f"pre-templated dataset {dataset!r}: fmt must be one of "
                    f"{', '.join(f for f in jsonl.FORMATS if f != 'chat')}, got {fmt!r}")
  if isinstance(files, Mapping):
    templates = {str(t): os.fspath(p) for t, p in files.items()}
  else:
    paths = [os.fspath(p) for p in files]
    templates = {os.path.basename(p).removesuffix(".jsonl"): p for p in paths}
    if len(templates) != len(paths):
      raise UserError(f"pre-templated dataset {dataset!r}: two files share a name; give {{template: path}}")
  if not templates:
    raise UserError(f"pre-templated dataset {dataset!r}: no files")
  trunc.check_policy(truncation, f"pre-templated dataset {dataset!r}: truncation")
  if trunc.cut_field(truncation):
    raise UserError(f"pre-templated dataset {dataset!r}: truncation={truncation!r} cuts a template field, but "
                    f"pre-templated prompts have none; choose one of {', '.join(trunc.POLICIES)}")
  source = PretemplatedSource(templates, fmt, options=_per_template_options(options, list(templates)),
                              options_field=options_field, splits=splits, group_key=group_key,
                              split_seed=split_seed, on_error=on_error, max_chars=max_chars)
  skips = check_skips(None, dataset)
  clusters = (cluster,) if isinstance(cluster, str) else tuple(cluster)
  variants = [tmpl.ZERO_SHOT_OPT, tmpl.ZERO_SHOT_NOOPT] if source.has_options else [tmpl.ZERO_SHOT_NOOPT]
  names = []
  for variant in variants:
    name = f"{dataset}_{variant}"
    info = TaskInfo(name, dataset, clusters, variant, len(templates), source.has_options, len(templates),
                    metrics=tuple(metrics), truncation=truncation)
    seqio.TaskRegistry.add(
        name, task_cls=InstructionTask, info=info, skips=skips, source=source,
        output_features=output_features(vocabulary),
        preprocessors=[
            PretemplatedRendering(jsonl.DEFAULT_TEMPLATES[fmt][0], variant, name, dataset, clusters[0]),
            trunc.TokenizeAndCut(truncation),
        ],
        metric_fns=list(metric_fns), shuffle_buffer_size=shuffle_buffer_size)
    names.append(name)
  return names


def describe(source: PretemplatedSource) -> dict[str, Any]:
  """{template: {"id", "path", "options"}} of a registered dataset's source (options resolved: reads the files)."""
  return {t: {"id": i, "path": p, "options": source.options_of(p)} for i, (t, p) in enumerate(source.templates.items())}
