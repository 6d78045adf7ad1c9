"""Flan-style instruction templates, rendered inside the tf.data graph.

A template is a pair of Python format strings over an example's string fields
(`"Premise: {premise}"`). Rendering is compiled into `tf.strings.join` over the
literal pieces and feature tensors, so every source (TFDS, JSONL, procedural)
shares one fast, deterministic path. `{options_}` marks where FLAN's
`OPTIONS:` list goes; templates without it get the list appended.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping, Sequence

import tensorflow as tf

OPTIONS_FIELD = "options_"
# Variants of a task; each is registered as its own seqio task (suffix below).
ZERO_SHOT_OPT = "zs_opt"
ZERO_SHOT_NOOPT = "zs_noopt"
FEW_SHOT_OPT = "fs_opt"
FEW_SHOT_NOOPT = "fs_noopt"
CHAIN_OF_THOUGHT = "zs_cot"  # needs a "rationale" field; targets reason first, then answer
VARIANTS = (ZERO_SHOT_OPT, ZERO_SHOT_NOOPT, FEW_SHOT_OPT, FEW_SHOT_NOOPT, CHAIN_OF_THOUGHT)
COT_TRIGGER = "Let's think step by step."
COT_TARGET = "{rationale} So the answer is {answer}."
_COT_ANSWER = re.compile(r"So the answer is (.*?)\.?\s*$", re.DOTALL)
EXEMPLAR_SEPARATOR = "\n\n"


def lists_options(variant: str) -> bool:
  return variant.endswith("_opt")


def is_few_shot(variant: str) -> bool:
  return variant.startswith("fs_")


def extract_cot_answer(text: str) -> str:
  """The answer after "So the answer is" in a chain-of-thought output ("" when absent)."""
  m = _COT_ANSWER.search(text.strip())
  return m.group(1).strip() if m else ""


@dataclasses.dataclass(frozen=True)
class Template:
  """One way of phrasing a task; `reverse` marks templates that turn it around."""

  inputs: str
  targets: str = "{answer}"
  reverse: bool = False

  def fields(self) -> set[str]:
    return {f for s in (self.inputs, self.targets) for f in _field_names(s)} - {OPTIONS_FIELD}


def _field_names(fmt: str) -> list[str]:
  return [name for _, name, _, _ in string.Formatter().parse(fmt) if name]


def _render(fmt: str, ex: Mapping[str, tf.Tensor], options_text: tf.Tensor) -> tf.Tensor:
  pieces = []
  for literal, name, spec, conv in string.Formatter().parse(fmt):
    if spec or conv:
      raise ValueError(f"template {fmt!r}: format specs are not supported ({name}:{spec})")
    if literal:
      pieces.append(tf.constant(literal))
    if name:
      pieces.append(options_text if name == OPTIONS_FIELD else ex[name])
  return tf.strings.join(pieces) if pieces else tf.constant("")


def options_text(options: tf.Tensor) -> tf.Tensor:
  """FLAN's options suffix: 'OPTIONS:\\n- a\\n- b' (empty when there are none)."""
  body = tf.strings.reduce_join(tf.strings.join(["- ", options]), separator="\n")
  return tf.cond(tf.size(options) > 0, lambda: tf.strings.join(["OPTIONS:\n", body]), lambda: tf.constant(""))


def render(template: Template, ex: Mapping[str, tf.Tensor], variant: str) -> tuple[tf.Tensor, tf.Tensor]:
  """Renders (inputs, targets). Inputs end with a newline: a decoder sees the boundary."""
  # Turned-around templates answer with a field, not an option: no OPTIONS list.
  with_options = lists_options(variant) and not template.reverse
  opts = options_text(ex["options"]) if with_options else tf.constant("")
  inputs_fmt = template.inputs
  if OPTIONS_FIELD not in _field_names(inputs_fmt) and with_options:
    inputs = _render(inputs_fmt, ex, opts)
    inputs = tf.cond(tf.strings.length(opts) > 0, lambda: tf.strings.join([inputs, "\n\n", opts]), lambda: inputs)
  else:
    inputs = _render(inputs_fmt, ex, opts)
  inputs = tf.strings.strip(inputs)  # an empty {options_} must not leave stray blank lines
  if variant == CHAIN_OF_THOUGHT:
    return tf.strings.join([inputs, " ", COT_TRIGGER, "\n"]), _render(COT_TARGET, ex, opts)
  return tf.strings.join([inputs, "\n"]), _render(template.targets, ex, opts)


def render_text(template: Template, fields: Mapping[str, str]) -> str:
  """`render`'s inputs in plain Python, for a template without options (the noopt variant): stripped, then a
  newline. Preference prompts are templated here, in the numpy function that reads them."""
  pieces = []
  for literal, name, spec, conv in string.Formatter().parse(template.inputs):
    if spec or conv or name == OPTIONS_FIELD:
      raise ValueError(f"template {template.inputs!r}: only plain fields render as text ({name})")
    pieces.append(literal + (fields[name] if name else ""))
  return "".join(pieces).strip(" \t\n\r\v\f") + "\n"  # ASCII whitespace, as tf.strings.strip


def check_templates(templates: Sequence[Template], fields: set[str], task: str) -> None:
  """Fails at registration when a template names a field the source lacks."""
  if not templates:
    raise ValueError(f"task {task!r} has no templates")
  if all(t.reverse for t in templates):
    raise ValueError(f"task {task!r} has only turned-around templates; evaluation needs a forward one")
  for i, t in enumerate(templates):
    missing = t.fields() - fields
    if missing:
      raise ValueError(f"task {task!r} template {i} uses fields {sorted(missing)} not in {sorted(fields)}")


def example_hash(ex: Mapping[str, tf.Tensor], buckets: int) -> tf.Tensor:
  """A deterministic per-example bucket from its string fields (template choice)."""
  return tf.strings.to_hash_bucket_fast(example_key(ex, with_split=True), buckets)


def with_exemplars(template: Template, ex: Mapping[str, tf.Tensor], exemplars: Mapping[str, tf.Tensor],
                   variant: str) -> tuple[tf.Tensor, tf.Tensor]:
  """Few-shot rendering: solved exemplars (same template) before the example; never the example itself.

  `exemplars` holds k+1 candidate examples (batched fields, options padded with
  ""); candidates equal to `ex` are dropped and the first k others are used.
  """
  inputs, targets = render(template, ex, variant)
  count = tf.shape(exemplars["answer"])[0]
  key = example_key(ex)
  shots = []
  for j in range(exemplars["answer"].shape[0] or 0):
    cand = {k: v[j] for k, v in exemplars.items()}
    cand["options"] = tf.boolean_mask(cand["options"], tf.strings.length(cand["options"]) > 0)
    e_in, e_tgt = render(template, cand, variant)
    shots.append((tf.not_equal(example_key(cand), key), tf.strings.join([e_in, e_tgt])))
  keep = tf.stack([k for k, _ in shots])
  texts = tf.stack([t for _, t in shots])
  # Keep the first k = count - 1 candidates that differ from the example.
  rank = tf.cumsum(tf.cast(keep, tf.int32))
  chosen = tf.boolean_mask(texts, keep & (rank <= count - 1))
  prefix = tf.strings.reduce_join(tf.strings.join([chosen, EXEMPLAR_SEPARATOR]))
  return tf.strings.join([prefix, inputs]), targets


def example_key(ex: Mapping[str, tf.Tensor], with_split: bool = False) -> tf.Tensor:
  """The example's identity: its scalar string fields joined in a fixed order."""
  keys = sorted(k for k, v in ex.items()
                if v.dtype == tf.string and v.shape.rank == 0 and (with_split or k != "split"))
  return tf.strings.join([ex[k] for k in keys], separator="\x1f")
