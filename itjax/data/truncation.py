"""How over-long inputs are cut, per task: keep the start, keep the end, keep both ends, or cut a named field.

seqio keeps an input's first tokens, which for most prompts loses the question and the `OPTIONS:`
list at the end (two thirds of P3's prompts at 256 tokens). A task chooses instead (`truncation=`
when it registers; `None` takes the run's default, gin `truncation.default`):

- "keep_start": the first tokens (seqio's behaviour, the default).
- "keep_end": the last tokens (the question and options survive; the instruction may not).
- "keep_both_ends": the first quarter of the budget and the last three quarters: an instruction at
  the top and a question at the bottom both survive, the middle (usually the passage) is cut.
  The choice for pre-templated prompts, whose fields are no longer known.
- "field:NAME": only the template field NAME (e.g. "field:passage") is shortened, from its end, so
  that the instruction, question and options around it survive. The rendered prompt is tokenized
  in three pieces (before, the field, after) only when it is too long; prompts that fit are
  tokenized whole, exactly as before. If the text around the field alone is too long, or the
  template has no such field, the prompt keeps its start.

Few-shot variants always keep the end (their oldest exemplar goes first, never the query).
Truncation is counted in the stream (`inputs_truncated`), and eval reports show the text the
model saw.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping

import gin
import seqio
import tensorflow as tf

from itjax.errors import UserError

KEEP_START = "keep_start"
KEEP_END = "keep_end"
KEEP_BOTH_ENDS = "keep_both_ends"
POLICIES = (KEEP_START, KEEP_END, KEEP_BOTH_ENDS)
FIELD = "field:"
# Transient features: the rendered prompt around the cut field ("" when the template lacks it).
PIECES = ("inputs_before_field", "inputs_field", "inputs_after_field")
# Token counts before trimming (targets with their EOS), so that the training stream can count truncation.
UNTRIMMED = {"inputs": "inputs_untrimmed_length", "targets": "targets_untrimmed_length"}


def check_policy(policy: str | None, what: str = "truncation") -> str | None:
  """`policy` if valid (None: the run's default), else a UserError naming the choices."""
  if policy is None or policy in POLICIES or (isinstance(policy, str) and policy.startswith(FIELD)
                                              and len(policy) > len(FIELD)):
    return policy
  raise UserError(f"{what}={policy!r}: choose {', '.join(POLICIES)} or 'field:NAME' (cut that template field)")


def cut_field(policy: str | None) -> str | None:
  """The field a "field:NAME" policy cuts, else None."""
  return policy[len(FIELD):] if policy and policy.startswith(FIELD) else None


@gin.configurable("truncation")
def run_default(default: str = KEEP_START) -> str:
  """The run's policy for tasks registered without one (gin `truncation.default`); read once per command."""
  policy = check_policy(default, "truncation.default")
  if cut_field(policy):
    raise UserError("truncation.default: a 'field:NAME' policy names a task's template field; set it per task "
                    f"(register_*(..., truncation={policy!r})); choose one of {', '.join(POLICIES)} here")
  return policy


def _keep(ids: tf.Tensor, length: int, policy: str) -> tf.Tensor:
  n = tf.size(ids)
  if policy == KEEP_END:
    return ids[tf.maximum(n - length, 0):]
  if policy == KEEP_BOTH_ENDS:
    head = length // 4
    return tf.cond(n > length, lambda: tf.concat([ids[:head], ids[n - (length - head):]], 0), lambda: ids)
  return ids[:length]


def _cut_field(ex: Mapping[str, tf.Tensor], vocab: seqio.Vocabulary, length: int) -> tf.Tensor:
  """inputs with the field shortened to fit `length` (the whole prompt when it fits or the field cannot help)."""
  before, field, after = (vocab.encode_tf(ex[k]) for k in PIECES)
  room = length - tf.size(before) - tf.size(after)
  usable = (tf.strings.length(ex[PIECES[1]]) > 0) & (room > 0)
  cut = tf.concat([before, field[:tf.maximum(room, 0)], after], 0)
  return tf.cond((tf.size(ex["inputs"]) > length) & usable, lambda: cut, lambda: ex["inputs"][:length])


@dataclasses.dataclass(frozen=True)
class InputTruncation:
  """The seqio preprocessor (after tokenization) that cuts `inputs` by `policy`; None: the run's default.

  A dataclass transform: seqio fills `output_features` and `sequence_length` when it applies it.
  """

  policy: str | None = None
  output_features: Mapping[str, seqio.Feature] | None = None
  sequence_length: Mapping[str, int] | None = None

  def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    policy = self.policy or KEEP_START
    length = (self.sequence_length or {}).get("inputs")
    vocab = self.output_features["inputs"].vocabulary

    def cut(ex):
      ex = dict(ex)
      pieces = {k: ex.pop(k) for k in PIECES if k in ex}
      if length:
        if cut_field(policy) and pieces:
          ex["inputs"] = _cut_field({**ex, **pieces}, vocab, length)
        else:
          ex["inputs"] = _keep(ex["inputs"], length, policy)
      return ex

    return ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE)


def record_untrimmed_lengths(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Notes each tokenized example's lengths before any trimming (targets counted with the EOS to come), so that
  `itjax.data.pipeline` can count, per example, which of the two were cut."""
  return ds.map(lambda ex: {**ex, UNTRIMMED["inputs"]: tf.size(ex["inputs"]),
                            UNTRIMMED["targets"]: tf.size(ex["targets"]) + 1},
                num_parallel_calls=tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class TokenizeAndCut:
  """The seqio preprocessor every instruction task ends with: tokenize the rendered text, note the lengths, cut
  inputs by `policy` (None: the run's default), keep the targets' first tokens and append the EOS (seqio).

  One element-wise step on text, so that a mixture can apply it once after sampling instead of once per
  task (`itjax.data.pipeline`); seqio fills `output_features` and `sequence_length` when it applies it.
  """

  policy: str | None = None
  output_features: Mapping[str, seqio.Feature] | None = None
  sequence_length: Mapping[str, int] | None = None

  def __call__(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    ds = record_untrimmed_lengths(seqio.preprocessors.tokenize(ds, self.output_features))
    ds = InputTruncation(self.policy, self.output_features, self.sequence_length)(ds)
    return seqio.preprocessors.append_eos_after_trim(ds, self.output_features, self.sequence_length)


def tail(task: seqio.Task) -> TokenizeAndCut | None:
  """The closing `TokenizeAndCut` of a task that ends with one (instruction and pre-templated tasks; chat ones not)."""
  procs = task.preprocessors
  return procs[-1] if procs and isinstance(procs[-1], TokenizeAndCut) else None


def with_default(task: seqio.Task, policy: str) -> seqio.Task:
  """`task` with the run's default `policy` where it registered none: itself when nothing changes, else a copy."""
  procs = list(task.preprocessors)
  at = [i for i, p in enumerate(procs) if isinstance(p, TokenizeAndCut) and p.policy is None]
  if not at or policy == KEEP_START:
    return task
  for i in at:
    procs[i] = TokenizeAndCut(policy)
  out = copy.copy(task)  # the same source, features and metadata (InstructionTask.info, skip counters)
  # seqio.Task keeps them in `_preprocessor_constructor_args`, read through a cached property.
  out._preprocessor_constructor_args = tuple(procs)  # noqa: SLF001
  out.__dict__.pop("preprocessors", None)
  return out
