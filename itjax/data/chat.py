"""Multi-turn chat tasks: every assistant turn is learned; system and user turns are context only.

A conversation [system], user, assistant, user, assistant, ... becomes one example (token ids):

  inputs              = "System: {s}\\n" "User: {u1}\\nAssistant:\\n" {a1} EOS "User: {u2}\\nAssistant:\\n"
  targets             = {a2} EOS
  inputs_loss_weights = 1 on {a1} EOS (every earlier assistant turn and its EOS), 0 elsewhere in inputs

Every assistant turn ends with EOS, so the model learns to stop after each reply, as it must at
inference. The decoder-only feature converter turns `inputs_loss_weights` into
`decoder_loss_weights` (loss on every assistant turn and nothing else, packed or not); the
encoder-decoder converter makes one example per assistant turn instead (the history before it ->
encoder, the turn -> decoder), as FLAN/T5X train dialogue: a T5 decoder sees only its target.
Eval splits use the same layout: the prompt is the history, the target the last reply.

Truncation, given sequence lengths (the policy is explicit and counted): the last reply is
trimmed to the targets length like any target (EOS kept). A history longer than the inputs length
loses whole turns from the start, always starting again at a user turn; the system prompt stays if
it fits with what remains. If even the last user turn is too long it keeps its last tokens (the end
of the question and the "Assistant:" cue). Each example records the turns and tokens it lost
(`TURNS_DROPPED`, `TOKENS_CUT`); the training stream sums them (`itjax.data.stream_stats`) and
`itjax tasks quality --inputs_length` counts the examples that lose anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from itjax.data import templates as tmpl
from itjax.data import truncation as trunc
from itjax.data.chat_format import LABELS
from itjax.data.skips import SkipCounts
from itjax.data.tasks import InstructionTask, TaskInfo, check_skips, output_features

# Source features: one string per turn, padded with "" roles to the longest conversation of a chunk.
ROLES = "turn_roles"
TEXTS = "turn_texts"
# Example features besides the instruction-task ones.
LOSS_MASK = "inputs_loss_weights"
TURNS_DROPPED = "chat_turns_dropped"
TOKENS_CUT = "chat_tokens_cut"


def _label(roles: tf.Tensor, which: int) -> tf.Tensor:
  out = tf.fill(tf.shape(roles), "")
  for role, pair in LABELS.items():
    out = tf.where(tf.equal(roles, role), pair[which], out)
  return out


def render_conversation(roles: tf.Tensor, texts: tf.Tensor, vocab: seqio.Vocabulary, max_inputs: int | None
                        ) -> dict[str, tf.Tensor]:
  """inputs, LOSS_MASK, targets (no EOS yet), their texts and the truncation counts of one conversation.

  `roles`/`texts` are 1-D (validated: optional system turn, then user/assistant alternating, ending
  with the assistant); padding turns have role "".
  """
  keep = tf.strings.length(roles) > 0
  # An empty system prompt is left out, as in the rendered history of `itjax.data.jsonl`.
  keep &= ~(tf.equal(roles, "system") & tf.equal(tf.strings.length(tf.strings.strip(texts)), 0))
  roles, texts = tf.boolean_mask(roles, keep), tf.boolean_mask(texts, keep)
  pieces = tf.strings.join([_label(roles, 0), texts, _label(roles, 1)])
  hist_roles, hist = roles[:-1], pieces[:-1]
  n = tf.size(hist)
  is_reply = tf.equal(hist_roles, "assistant")
  tokens = tf.map_fn(lambda s: tf.cast(vocab.encode_tf(s), tf.int32), hist,
                     fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))
  num_replies = tf.reduce_sum(tf.cast(is_reply, tf.int32))
  eos = tf.RaggedTensor.from_row_lengths(tf.fill([num_replies], vocab.eos_id), tf.cast(is_reply, tf.int64))
  tokens = tf.concat([tokens, tf.cast(eos, tf.int32)], axis=1)
  lens = tf.cast(tokens.row_lengths(), tf.int32)
  idx = tf.range(n)
  rows = idx
  if max_inputs is not None:
    suffix = tf.reverse(tf.cumsum(tf.reverse(lens, [0])), [0])  # suffix[i]: tokens of turns i..n-1
    has_system = tf.equal(hist_roles[0], "system")
    system_len = tf.where(has_system, lens[0], 0)
    is_user = tf.equal(hist_roles, "user")
    never = n + 1

    def first(ok):
      return tf.reduce_min(tf.where(ok, idx, never))

    with_system = first(is_user & (system_len + suffix <= max_inputs))
    without = first(is_user & (suffix <= max_inputs))
    last_user = tf.reduce_max(tf.where(is_user, idx, -1))
    start = tf.where(with_system < never, with_system, tf.where(without < never, without, last_user))
    keep_system = has_system & (with_system < never)
    rows = tf.boolean_mask(idx, (idx >= start) | (keep_system & tf.equal(idx, 0)))
  inputs = tf.gather(tokens, rows).flat_values
  mask = tf.repeat(tf.cast(tf.gather(is_reply, rows), tf.int32), tf.gather(lens, rows))
  # Still too long only when the last user turn alone is: it keeps its end.
  cut = tf.constant(0) if max_inputs is None else tf.maximum(tf.size(inputs) - max_inputs, 0)
  inputs, mask = inputs[cut:], mask[cut:]
  text_pieces = tf.where(is_reply, tf.strings.join([hist, "\n"]), hist)  # EOS shown as a line break
  return {
      "inputs": inputs, LOSS_MASK: mask,
      "targets": tf.cast(vocab.encode_tf(texts[-1]), tf.int32),
      "inputs_pretokenized": tf.strings.reduce_join(text_pieces), "targets_pretokenized": texts[-1],
      TURNS_DROPPED: n - tf.size(rows),
      TOKENS_CUT: tf.reduce_sum(lens) - tf.reduce_sum(tf.gather(lens, rows)) + cut,
  }


def render_chat(ds: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                output_features: Mapping[str, seqio.Feature], *, task: str, dataset: str,
                cluster: str) -> tf.data.Dataset:
  """The seqio preprocessor of chat tasks: turns -> token features (see the module docstring)."""
  vocab = output_features["inputs"].vocabulary
  max_inputs = (sequence_length or {}).get("inputs")

  def one(ex):
    out = render_conversation(ex[ROLES], ex[TEXTS], vocab, max_inputs)
    return {**out, "answer": ex["answer"], "options": ex["options"], "task": tf.constant(task),
            "dataset": tf.constant(dataset), "cluster": tf.constant(cluster),
            "variant": tf.constant(tmpl.ZERO_SHOT_NOOPT), "template_id": tf.constant(0, tf.int32)}

  return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)


def register_chat_task(dataset: str, cluster: str | Sequence[str], source: seqio.DataSource, *,
                       vocabulary: seqio.Vocabulary | None = None, metric_fns: Sequence = (),
                       shuffle_buffer_size: int = 10_000, skips: SkipCounts | None = None) -> list[str]:
  """Registers `<dataset>_zs_noopt` over a source with ROLES/TEXTS turns, "answer", "options"; returns [name].

  The task is an `InstructionTask` whose info says `chat` (its examples carry LOSS_MASK).
  """
  clusters = (cluster,) if isinstance(cluster, str) else tuple(cluster)
  name = f"{dataset}_{tmpl.ZERO_SHOT_NOOPT}"
  info = TaskInfo(name, dataset, clusters, tmpl.ZERO_SHOT_NOOPT, 1, False, 1, chat=True)
  seqio.TaskRegistry.add(
      name, task_cls=InstructionTask, info=info, skips=check_skips(skips, dataset), source=source,
      output_features=output_features(vocabulary),
      preprocessors=[functools.partial(render_chat, task=name, dataset=dataset, cluster=clusters[0]),
                     trunc.record_untrimmed_lengths, seqio.preprocessors.append_eos_after_trim],
      metric_fns=list(metric_fns), shuffle_buffer_size=shuffle_buffer_size)
  return [name]


def one_example_per_turn(ds: tf.data.Dataset, targets_length: int,
                         count: Callable[[Mapping[str, tf.Tensor]], Sequence[tf.Operation]] | None = None
                         ) -> tf.data.Dataset:
  """Encoder-decoder chat: each earlier assistant turn (a run of LOSS_MASK) becomes its own example.

  Turn i's example has the history before it as inputs and the turn (with its EOS) as targets,
  trimmed to `targets_length` keeping the EOS; the conversation's own (inputs, targets) comes last.
  Examples without assistant turns in their inputs (every non-chat example) pass through as they
  are. Only inputs and targets are kept. `count({"examples": n, "tokens_cut": m})` returns ops
  that record the extra examples and the target tokens trimmed.
  """

  def expand(ex):
    x, m = ex["inputs"], tf.cast(ex[LOSS_MASK], tf.int32)
    before = tf.concat([[0], m[:-1]], 0)
    after = tf.concat([m[1:], [0]], 0)
    starts = tf.cast(tf.where((m > 0) & (before == 0))[:, 0], tf.int32)
    ends = tf.cast(tf.where((m > 0) & (after == 0))[:, 0], tf.int32) + 1
    if count:
      cut = tf.reduce_sum(tf.maximum(ends - starts - targets_length, 0))
      with tf.control_dependencies(count({"examples": tf.size(starts), "tokens_cut": cut})):
        x = tf.identity(x)

    def turn(i):  # trimmed to targets_length, keeping the turn's EOS last
      s, e = starts[i], ends[i]
      over = tf.cast(e - s > targets_length, tf.int32)
      return {"inputs": x[:s], "targets": tf.concat([x[s:tf.minimum(e, s + targets_length - over)], x[e - over:e]], 0)}

    turns = tf.data.Dataset.range(tf.size(starts, out_type=tf.int64)).map(turn)
    return turns.concatenate(tf.data.Dataset.from_tensors({"inputs": x, "targets": ex["targets"]}))

  return ds.flat_map(expand)
