"""lm-evaluation-harness backend: run lm-eval tasks on itjax models (decoder-only and T5).

Registered as model "itjax". From an itjax MODEL_DIR:

    python -m itjax.eval.lm_eval_backend --model itjax --model_args pretrained=MODEL_DIR --batch_size 64 \
        --tasks hellaswag

(this module registers the backend, then hands over to lm-eval's command line; lm-eval's --batch_size
defaults to 1), or from Python, `lm_eval.simple_evaluate(model=ItjaxLM(model=model, params=params), ...)`
once this module is imported. Other model_args: vocabulary, max_length, max_gen_toks.

A decoder-only model sees every sequence behind BOS (id 0), as PrefixLMFeatureConverter builds training
rows; an encoder-decoder gets the context (prompt) as its encoder input and scores or generates the
continuation with its decoder, as lm-eval's seq2seq HF backend does (`itjax.models.interface`):
  * loglikelihood: BOS + context + continuation, scored by `score_continuations`; a context too long for
    `max_length` loses its oldest tokens.
  * loglikelihood_rolling: lm-eval's disjoint rolling windows (`get_rolling_token_windows`, context_len=1),
    each window behind its own BOS, so that every token is predicted exactly once and no row exceeds
    `max_length` tokens of input.
  * generate_until: greedy decoding after BOS + context (left-truncated to `max_length - max_gen_toks`),
    cut at the first stop string. Sampling is not supported.
Requests are sorted by length (longest first) for batching; results come back in request order.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from itjax.core.mesh import create_mesh, logical_axis_rules
from itjax.core.model_dir import ModelDir
from itjax.core.tokenizer import load_tokenizer
from itjax.core.vocabulary import resolve_tokenizer
from itjax.models.families import interface_for

log = logging.getLogger("itjax")

BOS_ID = 0  # decoder-only rows start with it (added by the model interface)
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_LENGTH = 2048
Pair = tuple[list[int], list[int]]


def resolve_vocabulary(vocabulary: Any) -> Any:
  """The vocabulary hook: None -> the configured one (gin's vocabulary.path; bytes by default), "byte" ->
  bytes; a path -> a SentencePiece model, an HF tokenizer.json, or a directory holding one; an object with
  encode / decode / eos_id (a seqio vocabulary, an `itjax.core.tokenizer.Tokenizer`) as it is."""
  if vocabulary is None:
    return resolve_tokenizer(None)
  if vocabulary in ("byte", "bytes"):
    return load_tokenizer(None)
  if isinstance(vocabulary, str):
    return load_tokenizer(vocabulary)
  if all(hasattr(vocabulary, a) for a in ("encode", "decode", "eos_id")):
    return vocabulary
  raise TypeError(f"vocabulary: expected a tokenizer, 'byte' or a tokenizer path, got {vocabulary!r}")


def _parse_batch_size(batch_size: int | str | None) -> int:
  if batch_size is None:
    return DEFAULT_BATCH_SIZE
  if isinstance(batch_size, str) and not batch_size.isdigit():
    log.warning("batch_size=%r is not supported by the itjax backend; using %d", batch_size, DEFAULT_BATCH_SIZE)
    return DEFAULT_BATCH_SIZE
  return int(batch_size)


@register_model("itjax")
class ItjaxLM(LM):
  """lm-eval `LM` over an itjax model: from `pretrained` (an itjax MODEL_DIR or checkpoint) or (model, params)."""

  def __init__(self, pretrained: str | None = None, *, model: Any = None, params: Any = None,
               vocabulary: Any = None, batch_size: int | str | None = DEFAULT_BATCH_SIZE,
               max_length: int | str | None = None, max_gen_toks: int | str = 256, mesh: Any = None,
               rules: Any = None, max_batch_size: int | None = None, device: str | None = None):
    super().__init__()
    del max_batch_size  # lm-eval passes it (and device) to every backend; one fixed batch size here
    if device not in (None, "cpu", "cuda", "tpu", "gpu"):
      log.warning("device=%r ignored: the itjax backend runs on JAX's default devices", device)
    if pretrained is not None:
      if model is not None or params is not None:
        raise ValueError("give either pretrained=MODEL_DIR or model and params, not both")
      mesh = mesh if mesh is not None else create_mesh()
      rules = rules if rules is not None else logical_axis_rules()
      mdir = ModelDir.open(pretrained)
      loaded = mdir.load(mesh, rules)
      model, params = loaded.interface.model, loaded.params
      if vocabulary is None:  # the tokenizer `itjax convert` / `itjax train` stored beside the checkpoints
        vocabulary = mdir.tokenizer_file
    elif model is None or params is None:
      raise ValueError("the itjax backend needs pretrained=MODEL_DIR, or model and params")
    self.model, self.params = model, params
    self.iface = interface_for(model)
    self.mesh, self.rules = mesh, tuple(rules or ())
    self.vocab = resolve_vocabulary(vocabulary)
    cfg = getattr(self.iface.model, "cfg", None)
    self.max_length = int(max_length or getattr(cfg, "max_decode_length", DEFAULT_MAX_LENGTH))
    if self.max_length < 2:
      raise ValueError(f"max_length={self.max_length}: need at least 2")
    self.max_gen_toks = int(max_gen_toks)
    self.batch_size = _parse_batch_size(batch_size)
    if mesh is not None:  # the batch axis is sharded over (data, fsdp): keep batches divisible
      shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))
      self.batch_size = -(-self.batch_size // shards) * shards

  # ------------------------------------------------------------------- helpers

  def _context(self) -> contextlib.ExitStack:
    """The mesh and logical-axis-rules context that the params are sharded for."""
    stack = contextlib.ExitStack()
    if self.mesh is not None:
      stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def tok_encode(self, text: str) -> list[int]:
    return [int(t) for t in self.vocab.encode(text)]

  def tok_decode(self, tokens: Sequence[int]) -> str:
    return self.vocab.decode(list(tokens))

  def encode_pair(self, context: str, continuation: str) -> Pair:
    """(context ids, continuation ids), split as lm-eval does: trailing context spaces go to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
      context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ctx = self.tok_encode(context)
    whole = self.tok_encode(context + continuation)
    return ctx, whole[len(ctx):]

  def _truncate(self, prompt: list[int], continuation: list[int]) -> Pair:
    """Drops the oldest prompt tokens so that the model's input fits in max_length.

    Decoder-only: BOS + prompt + continuation[:-1]; encoder-decoder: the prompt (encoder) alone.
    """
    if len(continuation) > self.max_length:
      raise ValueError(f"continuation of {len(continuation)} tokens is longer than max_length={self.max_length}")
    excess = len(prompt) - self.iface.prompt_budget(self.max_length, len(continuation) - 1)
    return (prompt[excess:] if excess > 0 else prompt), continuation

  def score_pairs(self, pairs: Sequence[Pair], disable_tqdm: bool = True,
                  desc: str = "itjax loglikelihood") -> tuple[np.ndarray, np.ndarray]:
    """(sum log p, is_greedy) per (prompt, continuation) pair; longest first in batches, in the given order."""
    n = len(pairs)
    scores, greedy = np.zeros(n, np.float64), np.zeros(n, bool)
    unique: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for i, (p, c) in enumerate(pairs):
      unique.setdefault((tuple(p), tuple(c)), []).append(i)
    keys = sorted(unique, key=lambda k: -(len(k[0]) + len(k[1])))
    bar = tqdm(total=len(keys), disable=disable_tqdm, desc=desc)
    with self._context():
      for start in range(0, len(keys), self.batch_size):
        chunk = keys[start: start + self.batch_size]
        s, g = self.iface.score(self.params, [(list(p), list(c)) for p, c in chunk], batch_size=self.batch_size)
        for key, si, gi in zip(chunk, s, g, strict=True):
          scores[unique[key]], greedy[unique[key]] = float(si), bool(gi)
        bar.update(len(chunk))
    bar.close()
    return scores, greedy

  def rolling_windows(self, tokens: list[int]) -> list[Pair]:
    """Disjoint (prompt, continuation) windows covering `tokens` once; each row is BOS + prompt + continuation."""
    windows = []
    # One slot of every row goes to BOS, so windows span max_length - 1 tokens.
    for i, (ctx, pred) in enumerate(map(make_disjoint_window, get_rolling_token_windows(
        token_list=tokens, prefix_token=BOS_ID, max_seq_len=self.max_length - 1, context_len=1))):
      windows.append((ctx[1:] if i == 0 else ctx, pred))  # the first window's prefix token is the BOS itself
    return windows

  # ------------------------------------------------------------------- lm-eval API

  def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """(log p(continuation | context), is_greedy) per request (args: (context, continuation))."""
    pairs = [self._truncate(*self.encode_pair(*req.args)) for req in requests]
    scores, greedy = self.score_pairs(pairs, disable_tqdm=disable_tqdm or self.rank != 0)
    out = []
    for req, s, g in zip(requests, scores, greedy, strict=True):
      out.append((float(s), bool(g)))
      self.cache_hook.add_partial("loglikelihood", req.args, out[-1])
    return out

  def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
    """Log-likelihood of each whole document (args: (text,)), over rolling windows of max_length."""
    pairs, owner = [], []
    for i, req in enumerate(requests):
      windows = self.rolling_windows(self.tok_encode(req.args[0]))
      pairs += windows
      owner += [i] * len(windows)
    totals = np.zeros(len(requests), np.float64)
    if pairs:
      scores, _ = self.score_pairs(pairs, disable_tqdm=disable_tqdm or self.rank != 0,
                                   desc="itjax loglikelihood_rolling")
      np.add.at(totals, np.asarray(owner), scores)
    out = [float(t) for t in totals]
    for req, t in zip(requests, out, strict=True):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, t)
    return out

  def _loop_stop_id(self, until: list[str]) -> int:
    """The token that ends decoding early: a lone single-token stop string (e.g. "\\n"), else EOS.

    Text after any stop string is cut anyway; this only lets the decode loop finish sooner.
    """
    if len(until) == 1:
      ids = self.tok_encode(until[0])
      if len(ids) == 1 and ids[0] not in (BOS_ID, self.vocab.eos_id) and self.tok_decode(ids) == until[0]:
        return ids[0]
    return self.vocab.eos_id

  @staticmethod
  def _keep_last(tokens: list[int], n: int) -> list[int]:
    return tokens[len(tokens) - n:] if len(tokens) > n else tokens

  def _batches(self, order: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(order), self.batch_size):
      yield order[start: start + self.batch_size]

  def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
    """Greedy continuation of each context (args: (context, gen_kwargs)), cut at the first `until` string."""
    out: list[str | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
    bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="itjax generate_until")
    for members in groups.values():
      kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
      if kwargs.get("do_sample"):
        raise ValueError(f"the itjax backend decodes greedily; got sampling kwargs {dict(kwargs)} "
                         "(override with --gen_kwargs do_sample=False)")
      until = handle_stop_sequences(kwargs.get("until"), eos=None)
      max_new = int(kwargs["max_gen_toks"])
      # Decoder-only: BOS + context + new tokens share max_length; an encoder takes max_length of context.
      budget = self.iface.prompt_budget(self.max_length, max_new)
      if budget < 0:
        raise ValueError(f"max_gen_toks={max_new} leaves no room for a prompt within max_length={self.max_length}")
      prompts = {i: self._keep_last(self.tok_encode(requests[i].args[0]), budget) for i in members}
      stop_id = self._loop_stop_id(until)
      ends = {stop_id, self.vocab.eos_id, 0}
      order = sorted(members, key=lambda i: -len(prompts[i]))
      with self._context():
        for chunk in self._batches(order):
          rows = [prompts[i] for i in chunk]
          new = self.iface.generate(self.params, rows + [rows[-1]] * (self.batch_size - len(rows)),
                                    max_new_tokens=max_new, eos_id=stop_id)
          for i, row in zip(chunk, new, strict=False):
            toks = []
            for t in row.tolist():
              if t in ends:
                break
              toks.append(t)
            text = postprocess_generated_text(self.tok_decode(toks), until, None)
            out[i] = text
            self.cache_hook.add_partial("generate_until", requests[i].args, text)
          bar.update(len(chunk))
    bar.close()
    return [o if o is not None else "" for o in out]


if __name__ == "__main__":
  from lm_eval.__main__ import cli_evaluate

  cli_evaluate()
