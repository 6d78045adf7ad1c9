"""Preference data: responses to one prompt that a person (or a rule) ranked -> packed rows of (chosen, rejected).

Sources (JSONL, validated line by line with the SFT formats' errors and skip counts, `itjax.data.jsonl`):

- `pairs`: `{"prompt", "chosen", "rejected"}`. `chosen` / `rejected` are strings, or chat message lists that
  end with the assistant's reply (UltraFeedback-binarized): the conversation before the reply is the prompt
  (equal in both, else `prompt_mismatch`) and `prompt` is then ignored. Strings without `prompt` (HH-RLHF) split
  at their longest common prefix, as TRL's `extract_prompt` does.
- `ranking`: `{"prompt", "responses": [K strings], "ranking": [K ints]}` (InstructGPT's K = 4..9 ranked
  responses): `ranking[i]` is response i's rank, 1 the best; ties make no pair. A row gives every pair
  (better, worse): K(K-1)/2 of them when all ranks differ.

A text prompt is rendered with the task's template (the SFT templates; default `{instruction}`), a chat
prompt with the SFT chat layout (`itjax.data.chat_format`), and a response is its tokens + EOS, so a DPO
policy sees exactly what SFT trained it on. Over-long prompts lose their first tokens (the question's end
and the answer cue stay), over-long responses are cut to the targets length keeping EOS; both are counted,
and a pair whose responses are equal once cut (nothing to prefer) is dropped and counted.

The stream: each data shard reads its rows by position (`itjax.data.row_index`: epoch e is a permutation
of the rows drawn from the seed and e), so its state is a counter and resume is exact. After mixing, a row
becomes its pairs, consecutively: a prompt's pairs land in the same or the next packed rows, so in one batch
but for the batch's edge. A pair is packed as one unit (`itjax.data.packing`, best fit) into rows twice as
long as SFT's (`itjax.models.features.preference_lengths`): chosen and rejected are two segments (ids 2k+1,
2k+2, which `preference_ids` repeats), so they never attend to each other. For an encoder-decoder the prompt +
EOS is the encoder's, once per side with the same ids, and the decoder's sequences are the responses alone.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from itjax.data import jsonl, row_index
from itjax.data import templates as tmpl
from itjax.data.chat_format import chat_text, chat_tokens
from itjax.data.packing import pack_dataset
from itjax.data.registry import require_task
from itjax.data.stream_stats import StreamStats
from itjax.data.tasks import TRAIN_SPLIT, output_features
from itjax.data.vocab import REGISTERED
from itjax.errors import UserError
from itjax.models.features import ENC_DEC, PREFERENCE_IDS, FeatureLayout, preference_lengths

log = logging.getLogger("itjax")

PAIRS, RANKING = "pairs", "ranking"
FORMATS = (PAIRS, RANKING)
MAX_RESPONSES = 16
# Skip reasons beside the JSONL ones.
SAME_RESPONSE = "same_response"
PROMPT_MISMATCH = "prompt_mismatch"
BAD_RANKING = "bad_ranking"
PROMPT_TEMPLATE = tmpl.Template("{instruction}")
_FIELDS = dict.fromkeys(jsonl.FIELDS, "")
_UNIT = ("inputs", "targets", "weights", "side", "pos")  # per-token arrays of one pair (both sequences)
_ENC = ("enc_inputs", "enc_side", "enc_pos")  # an encoder-decoder's: the prompt (+ EOS) once per side

Prompt = str | tuple[tuple[str, str], ...]  # text, or (role, content) chat turns ending with the user's


@dataclasses.dataclass(frozen=True)
class PreferenceRow:
  """One prompt, its responses and their ranks (1 = best)."""

  prompt: Prompt
  responses: tuple[str, ...]
  ranks: tuple[int, ...]

  def pairs(self) -> list[tuple[int, int]]:
    """(better, worse) response indices: every pair of different ranks."""
    n = len(self.responses)
    return [(i, j) for i in range(n) for j in range(n) if self.ranks[i] < self.ranks[j]]


# --- parsing lines ------------------------------------------------------------------------------------------------


def _prompt(obj: Mapping, *, required: bool) -> Prompt | None:
  if obj.get("prompt") is None:
    if required:
      raise jsonl.BadLine(jsonl.MISSING_FIELD, "prompt", f"missing (fields present: {', '.join(sorted(obj))})")
    return None
  v = obj["prompt"]
  if isinstance(v, str):
    return jsonl.nonempty(v, "prompt", target=False)
  if not isinstance(v, list):
    raise jsonl.BadLine(jsonl.WRONG_TYPE, "prompt", f"expected a string or a list of messages, got {type(v).__name__}")
  turns = _messages(v + [{"role": "assistant", "content": "-"}], "prompt", None)  # a prompt ends with the user
  return tuple((t.role, t.content) for t in turns[:-1])


def _messages(v: list, field: str, max_chars: int | None) -> list[jsonl.Turn]:
  try:
    return jsonl.chat_turns({"messages": v}, max_chars)
  except jsonl.BadLine as e:
    raise jsonl.BadLine(e.reason, (e.field or "messages").replace("messages", field, 1), e.message) from None


def _side(obj: Mapping, key: str, max_chars: int | None) -> tuple[tuple | None, str]:
  """(conversation before the reply or None, reply) of `chosen` / `rejected`."""
  if key not in obj:
    raise jsonl.BadLine(jsonl.MISSING_FIELD, key, f"missing (fields present: {', '.join(sorted(obj))})")
  v = obj[key]
  if isinstance(v, str):
    return None, jsonl.nonempty(v, key, target=True)
  if isinstance(v, list):
    turns = _messages(v, key, max_chars)
    return tuple((t.role, t.content) for t in turns[:-1]), turns[-1].content
  raise jsonl.BadLine(jsonl.WRONG_TYPE, key, f"expected a string or a list of messages, got {type(v).__name__}")


def common_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
  """(prompt, chosen, rejected) split at the longest common prefix, backing off one space (TRL's
  `extract_prompt`: the responses keep their leading space)."""
  i = 0
  while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
    i += 1
  if 0 < i < min(len(chosen), len(rejected)) + 1 and chosen[i - 1] == " ":
    i -= 1
  return chosen[:i], chosen[i:], rejected[i:]


def parse_pair(obj: Mapping, max_chars: int | None) -> PreferenceRow:
  """A `pairs` line (see the module docstring); a `jsonl.BadLine` when it is not valid."""
  prompt = _prompt(obj, required=False)
  chosen_history, chosen = _side(obj, "chosen", max_chars)
  rejected_history, rejected = _side(obj, "rejected", max_chars)
  if (chosen_history is None) != (rejected_history is None):
    raise jsonl.BadLine(jsonl.WRONG_TYPE, "rejected", "chosen and rejected must both be strings or both message "
                                                      "lists")
  if chosen_history is not None:
    if chosen_history != rejected_history:
      raise jsonl.BadLine(PROMPT_MISMATCH, "rejected", "the conversation before the last reply differs from "
                                                       "chosen's (a pair answers one prompt)")
    prompt = chosen_history
  elif prompt is None:
    prompt, chosen, rejected = common_prompt(chosen, rejected)
    if not prompt.strip():
      raise jsonl.BadLine(jsonl.MISSING_FIELD, "prompt", "missing, and chosen and rejected share no prefix to "
                                                         "take as the prompt")
    jsonl.nonempty(chosen, "chosen", target=True), jsonl.nonempty(rejected, "rejected", target=True)
  if chosen == rejected:
    raise jsonl.BadLine(SAME_RESPONSE, "rejected", "equals chosen: nothing to prefer")
  texts = {"chosen": chosen, "rejected": rejected, "prompt": prompt if isinstance(prompt, str) else
           "".join(c for _, c in prompt)}
  jsonl.check_length(texts, max_chars)
  return PreferenceRow(prompt, (chosen, rejected), (1, 2))


def parse_ranking(obj: Mapping, max_chars: int | None) -> PreferenceRow:
  """A `ranking` line (see the module docstring); a `jsonl.BadLine` when it is not valid."""
  prompt = _prompt(obj, required=True)
  responses, ranking = obj.get("responses"), obj.get("ranking")
  for key, v in (("responses", responses), ("ranking", ranking)):
    if v is None:
      raise jsonl.BadLine(jsonl.MISSING_FIELD, key, f"missing (fields present: {', '.join(sorted(obj))})")
    if not isinstance(v, list):
      raise jsonl.BadLine(jsonl.WRONG_TYPE, key, f"expected a list, got {type(v).__name__}")
  if not 2 <= len(responses) <= MAX_RESPONSES:
    raise jsonl.BadLine(BAD_RANKING, "responses", f"expected 2 to {MAX_RESPONSES} responses, got {len(responses)}")
  for i, r in enumerate(responses):
    if not isinstance(r, str):
      raise jsonl.BadLine(jsonl.WRONG_TYPE, f"responses[{i}]", f"expected a string, got {type(r).__name__}")
    jsonl.nonempty(r, f"responses[{i}]", target=True)
    if r in responses[:i]:
      raise jsonl.BadLine(SAME_RESPONSE, f"responses[{i}]", f"repeats responses[{responses.index(r)}]")
  if len(ranking) != len(responses):
    raise jsonl.BadLine(BAD_RANKING, "ranking", f"has {len(ranking)} ranks for {len(responses)} responses")
  for i, r in enumerate(ranking):
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
      raise jsonl.BadLine(BAD_RANKING, f"ranking[{i}]", f"expected a rank >= 1 (1 = best), got {r!r}")
  if len(set(ranking)) < 2:
    raise jsonl.BadLine(BAD_RANKING, "ranking", "all ranks are equal: no pair to prefer")
  texts = {f"responses[{i}]": r for i, r in enumerate(responses)}
  texts["prompt"] = prompt if isinstance(prompt, str) else "".join(c for _, c in prompt)
  jsonl.check_length(texts, max_chars)
  return PreferenceRow(prompt, tuple(responses), tuple(ranking))


PARSERS: dict[str, Callable[[Mapping, int | None], PreferenceRow]] = {PAIRS: parse_pair, RANKING: parse_ranking}


# --- sources ------------------------------------------------------------------------------------------------------


class PreferenceSource:
  """Preference rows per split: from JSONL files (validated when first read) or given rows (procedural data)."""

  def __init__(self, paths: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
               fmt: str = PAIRS, *, on_error: str = "raise", max_chars: int | None = jsonl.DEFAULT_MAX_CHARS,
               rows: Mapping[str, Sequence[PreferenceRow]] | None = None):
    if fmt not in FORMATS:
      raise UserError(f"unknown preference format {fmt!r} (choose from {', '.join(FORMATS)})")
    if (paths is None) == (rows is None):
      raise ValueError("a preference source takes paths or rows")
    if paths is not None and not isinstance(paths, Mapping):
      paths = {TRAIN_SPLIT: paths}
    self.paths = {k: [v] if isinstance(v, (str, os.PathLike)) else list(v) for k, v in (paths or {}).items()}
    self.fmt, self.on_error, self.max_chars = fmt, on_error, max_chars
    self._rows = {k: list(v) for k, v in rows.items()} if rows is not None else {}
    self.reports: dict[str, jsonl.Report] = {}

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.paths) if self.paths else tuple(self._rows)

  @property
  def skipped(self) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in self.reports.values():
      for k, n in r.skipped.items():
        out[k] = out.get(k, 0) + n
    return out

  def rows(self, split: str) -> list[PreferenceRow]:
    """The split's valid rows, in file order (read and validated once)."""
    if split not in self._rows:
      if split not in self.paths:
        raise UserError(f"preference source has no split {split!r} (splits: {', '.join(self.splits)})")
      out = []
      for path in self.paths[split]:
        report = self.reports[str(path)] = jsonl.Report(str(path), self.fmt)
        out += jsonl.scan_parsed(str(path), PARSERS[self.fmt], report, on_error=self.on_error,
                                 max_chars=self.max_chars)
        if not report.ok:
          log.warning("skipped bad lines (on_error='skip'): %s", report)
      if not out:
        raise UserError(f"{', '.join(map(str, self.paths[split]))}: no valid {self.fmt} lines in split {split!r}")
      self._rows[split] = out
    return self._rows[split]


# --- tokens -------------------------------------------------------------------------------------------------------


def prompt_text(prompt: Prompt, template: tmpl.Template) -> str:
  """The prompt as SFT shows it: a text prompt through `template`, a chat prompt in the chat layout."""
  return tmpl.render_text(template, {**_FIELDS, "instruction": prompt}) if isinstance(prompt, str) \
      else chat_text(list(prompt))


def prompt_ids(prompt: Prompt, template: tmpl.Template, vocab: seqio.Vocabulary) -> list[int]:
  if isinstance(prompt, str):
    return list(vocab.encode(prompt_text(prompt, template)))
  return chat_tokens(list(prompt), lambda s: list(vocab.encode(s)), vocab.eos_id)


def pair_unit(prompt: list[int], chosen: list[int], rejected: list[int], lengths: Mapping[str, int], eos: int,
              enc_eos: int | None = None) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
  """The per-token arrays of one pair (chosen sequence, then rejected) and (prompt cut, a response cut, the
  responses equal once cut: nothing left to prefer). With `enc_eos` (an encoder-decoder), the prompt + EOS is
  the encoder's, once per side, and the decoder's sequences are the responses alone."""
  room = lengths["inputs"] - (enc_eos is not None)
  prompt_cut = len(prompt) > room
  prompt = prompt[len(prompt) - room:] if prompt_cut else prompt
  cap = lengths["targets"]
  response_cut = max(len(chosen), len(rejected)) > cap
  parts = {k: [] for k in _UNIT + (_ENC if enc_eos is not None else ())}
  chosen, rejected = (r[:cap - 1] + [eos] if len(r) > cap else r for r in (chosen, rejected))
  for side, response in ((1, chosen), (2, rejected)):
    if enc_eos is not None:
      enc = prompt + [enc_eos]
      parts["enc_inputs"].append(enc)
      parts["enc_side"].append([side] * len(enc))
      parts["enc_pos"].append(list(range(len(enc))))
      prompt_part = []
    else:
      prompt_part = prompt
    seq = prompt_part + response
    parts["targets"].append(seq)
    parts["inputs"].append([0] + seq[:-1])  # seqio's autoregressive inputs: 0 first
    parts["weights"].append([0] * len(prompt_part) + [1] * len(response))
    parts["side"].append([side] * len(seq))
    parts["pos"].append(list(range(len(seq))))
  return ({k: np.concatenate(v).astype(np.int32) for k, v in parts.items()},
          (int(prompt_cut), int(response_cut), int(chosen == rejected)))


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


class _ShardRows:
  """This shard's rows as pair units by stream position (a pure function of it): position p reads row
  perm(seed, p // n)[p % n]."""

  def __init__(self, rows: Sequence[PreferenceRow], template: tmpl.Template, vocab: seqio.Vocabulary,
               lengths: Mapping[str, int], seed: int | None, enc_eos: int | None = None):
    self.rows, self.template, self.vocab, self.lengths, self.seed = rows, template, vocab, lengths, seed
    self.enc_eos = enc_eos
    self._perm: tuple[int, np.ndarray] | None = None

  def row(self, p: int) -> PreferenceRow:
    if self.seed is None:  # one pass in file order
      return self.rows[p]
    epoch, i = divmod(p, len(self.rows))
    if self._perm is None or self._perm[0] != epoch:
      self._perm = (epoch, _permutation(len(self.rows), self.seed, epoch))
    return self.rows[int(self._perm[1][i])]

  def columns(self, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows [start, stop) as padded columns: each row's units concatenated, with their lengths and cuts."""
    out = []
    for p in range(start, stop):
      row = self.row(p)
      prompt = prompt_ids(row.prompt, self.template, self.vocab)
      responses = [list(self.vocab.encode(r)) + [self.vocab.eos_id] for r in row.responses]
      units = [pair_unit(prompt, responses[i], responses[j], self.lengths, self.vocab.eos_id, self.enc_eos)
               for i, j in row.pairs()]
      out.append(({k: np.concatenate([u[k] for u, _ in units]) for k in units[0][0]},
                  np.array([len(u["targets"]) for u, _ in units], np.int32), np.array([c for _, c in units], np.int32),
                  np.array([len(u.get("enc_inputs", ())) for u, _ in units], np.int32)))
    pairs = max(len(n) for _, n, _, _ in out)
    cols = {}
    groups = [(_UNIT, "targets", "")] + ([(_ENC, "enc_inputs", "enc_")] if self.enc_eos is not None else [])
    for keys, lead, suffix in groups:
      width = max(len(u[lead]) for u, _, _, _ in out)
      cols.update({k: np.stack([np.pad(u[k], (0, width - len(u[k]))) for u, _, _, _ in out]) for k in keys})
      cols[suffix + "total"] = np.array([len(u[lead]) for u, _, _, _ in out], np.int32)
      at = 1 if not suffix else 3
      cols[suffix + "unit_lengths"] = np.stack([np.pad(r[at], (0, pairs - len(r[at]))) for r in out])
    cols["cuts"] = np.stack([np.pad(c.reshape(-1, 3), ((0, pairs - len(c)), (0, 0))) for _, _, c, _ in out])
    cols["units"] = np.array([len(n) for _, n, _, _ in out], np.int32)
    return cols


def _spec(enc: bool) -> dict[str, tf.TensorSpec]:
  groups = ("",) + (("enc_",) if enc else ())
  spec = {k: tf.TensorSpec([None], tf.int32) for k in _UNIT + (_ENC if enc else ())}
  for g in groups:
    spec.update({g + "total": tf.TensorSpec([], tf.int32), g + "unit_lengths": tf.TensorSpec([None], tf.int32)})
  return {**spec, "cuts": tf.TensorSpec([None, 3], tf.int32), "units": tf.TensorSpec([], tf.int32)}


def _units(ex: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
  """One row's pair units, in order (the decoder's and, for an encoder-decoder, the encoder's arrays)."""
  lens = ex["unit_lengths"][:ex["units"]]
  enc = "enc_unit_lengths" in ex
  enc_lens = ex["enc_unit_lengths"][:ex["units"]] if enc else lens

  def unit(start, n, enc_start, enc_n, cuts):
    out = {k: ex[k][start:start + n] for k in _UNIT}
    if enc:
      out.update({k: ex[k][enc_start:enc_start + enc_n] for k in _ENC})
    return {**out, "cuts": cuts}

  return tf.data.Dataset.from_tensor_slices((tf.cumsum(lens, exclusive=True), lens, tf.cumsum(enc_lens, exclusive=True),
                                             enc_lens, ex["cuts"][:ex["units"]])).map(unit)


# --- tasks --------------------------------------------------------------------------------------------------------


class PreferenceTask(seqio.Task):
  """A seqio task over preference rows. As a seqio task its examples are (prompt, best response), so SFT and
  evaluation read it as any task; a preference objective streams its pairs (`preference_dataset`)."""

  def __init__(self, *args: Any, preference: PreferenceSource, template: tmpl.Template, **kwargs: Any) -> None:
    super().__init__(*args, **kwargs)
    self.preference, self.template = preference, template


def _sft_dataset(source: PreferenceSource, template: tmpl.Template, split: str, shuffle_files: bool = False,
                 seed: int | None = None) -> tf.data.Dataset:
  rows = source.rows(split)
  best = [r.responses[int(np.argmin(r.ranks))] for r in rows]
  return tf.data.Dataset.from_tensor_slices({
      "inputs": [prompt_text(r.prompt, template) for r in rows], "targets": best,
      "inputs_pretokenized": [prompt_text(r.prompt, template) for r in rows], "targets_pretokenized": best})


def register_preference_task(name: str, source: PreferenceSource, *, template: tmpl.Template = PROMPT_TEMPLATE,
                             vocabulary: seqio.Vocabulary | None = None) -> str:
  """Registers `name` over `source` (see `PreferenceTask`); returns the name."""
  if set(template.fields()) - {"instruction", "answer"}:
    raise UserError(f"preference task {name!r}: a preference template may use only {{instruction}} (the prompt), "
                    f"got {template.inputs!r}")
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, task_cls=PreferenceTask, preference=source, template=template,
      source=seqio.FunctionDataSource(functools.partial(_sft_dataset, source, template), splits=source.splits),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=output_features(vocabulary))
  return name


def register_preference_jsonl(name: str, paths: str | Sequence[str] | Mapping[str, str | Sequence[str]],
                              fmt: str = PAIRS, *, template: tmpl.Template = PROMPT_TEMPLATE, on_error: str = "raise",
                              max_chars: int | None = jsonl.DEFAULT_MAX_CHARS,
                              vocabulary: seqio.Vocabulary | None = None) -> str:
  """Registers a preference task over JSONL files (`paths`: files, or {split: files}); nothing is read yet."""
  return register_preference_task(name, PreferenceSource(paths, fmt, on_error=on_error, max_chars=max_chars),
                                  template=template, vocabulary=vocabulary)


def preference_tasks(mixture_or_task_name: str) -> tuple[list[PreferenceTask], list[float]]:
  """The preference tasks of a task or mixture and their rates; a UserError names a task that is not one."""
  provider = require_task(mixture_or_task_name)
  tasks = [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)
  for t in tasks:
    if not isinstance(t, PreferenceTask):
      raise UserError(f"task {t.name!r} has no preference pairs, and this run's objective trains on pairs: "
                      "register it with itjax.data.preference.register_preference_jsonl (or train it with SFT)")
  rates = [1.0] if isinstance(provider, seqio.Task) else [provider.get_rate(t) for t in tasks]
  return tasks, rates


def preference_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                       seed: int | None, shard_index: int = 0, num_shards: int = 1, layout: FeatureLayout,
                       stats: StreamStats | None = None, vocabulary: seqio.Vocabulary | None = None,
                       split: str = TRAIN_SPLIT) -> tf.data.Dataset:
  """This shard's infinite stream of preference batches ([batch_size, `preference_lengths`] arrays); with
  `seed=None`, one pass over `split` in file order instead, its last batch possibly smaller (evaluation)."""
  vocab = vocabulary or REGISTERED
  enc_eos = layout.inputs_eos_id if layout.kind == ENC_DEC else None
  tasks, rates = preference_tasks(mixture_or_task_name)
  stats = stats if stats is not None else StreamStats()
  lengths = {k: int(task_feature_lengths[k]) for k in ("inputs", "targets")}
  parts = []
  for i, task in enumerate(tasks):
    if split not in task.preference.splits:
      raise UserError(f"task {task.name!r} has no {split!r} split (splits: {', '.join(task.preference.splits)})")
    rows = task.preference.rows(split)[shard_index::num_shards]
    if not rows:
      raise UserError(f"task {task.name!r}: no {split} rows for data shard {shard_index} of {num_shards}")
    shard = _ShardRows(rows, task.template, vocab, lengths, None if seed is None else seed + 7919 * i, enc_eos)
    parts.append(row_index.indexed_dataset(None if seed is not None else len(rows), shard.columns,
                                           _spec(enc_eos is not None)))
  if seed is None:
    ds = functools.reduce(lambda a, b: a.concatenate(b), parts)
  else:
    ds = parts[0] if len(parts) == 1 else tf.data.Dataset.sample_from_datasets(
        parts, weights=[r / sum(rates) for r in rates], seed=seed)
  ds = stats.counted(ds, lambda ex: {"preference_rows": 1})
  ds = ds.flat_map(_units)
  ds = stats.counted(ds, lambda u: {"preference_pairs": 1, "preference_prompts_truncated": u["cuts"][0],
                                    "preference_responses_truncated": u["cuts"][1],
                                    "preference_pairs_tied": u["cuts"][2]})
  ds = ds.filter(lambda u: tf.equal(u["cuts"][2], 0))
  rows_len = preference_lengths(layout, lengths)
  packed = dict.fromkeys(_UNIT, rows_len["decoder_target_tokens"])
  if enc_eos is not None:
    packed.update(dict.fromkeys(_ENC, rows_len["encoder_input_tokens"]))
  ds = pack_dataset(ds, packed, stats=stats.packing)

  def features(ex):
    seg = ex["targets_segment_ids"]
    ids = tf.where(seg > 0, 2 * (seg - 1) + ex["side"], 0)
    out = {"decoder_input_tokens": ex["inputs"], "decoder_target_tokens": ex["targets"],
           "decoder_loss_weights": ex["weights"], "decoder_segment_ids": ids, "decoder_positions": ex["pos"],
           PREFERENCE_IDS: ids}
    if enc_eos is not None:  # the same pair ids on the encoder: each decoder sequence reads its own prompt copy
      eseg = ex["enc_inputs_segment_ids"]
      out.update(encoder_input_tokens=ex["enc_inputs"], encoder_positions=ex["enc_pos"],
                 encoder_segment_ids=tf.where(eseg > 0, 2 * (eseg - 1) + ex["enc_side"], 0))
    return out

  return ds.map(features, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=seed is not None)
