"""Batched generation for `itjax serve`: requests from many HTTP threads share one decoding call.

A worker thread takes the first waiting request, waits `batch_wait_s` for more, groups rows (one row = one prompt
x one choice) by their sampling settings, and decodes up to `max_batch` rows at a time. Shapes are bucketed so
that few programs are compiled: the batch is always `max_batch` rows (padded with copies), prompt lengths and
`max_tokens` round up to powers of two. Decoding is `itjax.models.interface`'s (greedy or sampled, decoder-only
or T5), called with those buckets instead of its 32-token rounding.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np

from itjax.core.mesh import create_mesh, logical_axis_rules
from itjax.core.model_dir import ModelDir
from itjax.errors import UserError

logger = logging.getLogger("itjax")
MIN_LENGTH_BUCKET = 64
MIN_NEW_TOKENS_BUCKET = 16


def bucket(n: int, minimum: int) -> int:
  """The smallest power of two >= max(n, minimum)."""
  n = max(n, minimum)
  return 1 << (n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How to choose tokens; rows batch together only when these are equal. temperature 0: greedy."""

  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  seed: int | None = None

  @property
  def greedy(self) -> bool:
    return self.temperature <= 0 and self.top_k == 0 and self.top_p >= 1.0


@dataclasses.dataclass(frozen=True)
class Generation:
  """One row's new tokens (EOS and padding removed) and whether it ended with EOS."""

  tokens: list[int]
  eos: bool


@dataclasses.dataclass
class _Job:
  rows: list[list[int]]
  max_tokens: int
  sampling: Sampling
  future: cf.Future
  results: list[Generation | None]
  left: int


class Engine:
  """An itjax model (MODEL_DIR or checkpoint, trained or imported from HF) behind a batching queue."""

  def __init__(self, checkpoint: str, *, mesh_shape: Sequence[int] = (-1, 1, 1), max_batch: int = 8,
               batch_wait_s: float = 0.01):
    mdir = ModelDir.open(checkpoint)
    self.cfg = mdir.config
    self.mesh, self.rules = create_mesh(mesh_shape), logical_axis_rules()
    loaded = mdir.load(self.mesh, self.rules)
    self.iface, self.params = loaded.interface, loaded.params
    self.model = self.iface.model
    self.vocab = loaded.tokenizer  # the tokenizer it was trained or converted with
    self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
    self.context = self.cfg.max_decode_length
    self.vocab_size = self.cfg.vocab_size  # token-id prompts must lie below it (the embedding would clamp them)
    self.batches = 0  # decoding calls made (for tests and logs)
    self._queue: queue.Queue[_Job | None] = queue.Queue()
    self._seed = np.random.SeedSequence().entropy % (2**31)
    self._thread = threading.Thread(target=self._loop, name="itjax-serve-engine", daemon=True)
    self._thread.start()

  def check_length(self, prompt_tokens: int, max_tokens: int) -> str | None:
    """Why a prompt and budget do not fit the model's context, or None."""
    return self.iface.check_lengths(prompt_tokens, max_tokens, self.context)

  def submit(self, rows: list[list[int]], max_tokens: int, sampling: Sampling) -> cf.Future:
    """A future of one Generation per row."""
    fut: cf.Future = cf.Future()
    self._queue.put(_Job(rows, max_tokens, sampling, fut, [None] * len(rows), len(rows)))
    return fut

  def generate(self, rows: list[list[int]], max_tokens: int, sampling: Sampling = Sampling()) -> list[Generation]:
    return self.submit(rows, max_tokens, sampling).result()

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join(timeout=5)

  # --- worker ---------------------------------------------------------------------------------------------------------
  def _loop(self) -> None:
    while True:
      first = self._queue.get()
      if first is None:
        return
      jobs, deadline = [first], time.monotonic() + self.batch_wait_s
      while sum(len(j.rows) for j in jobs) < self.max_batch:
        try:
          job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        if job is None:
          self._queue.put(None)
          break
        jobs.append(job)
      groups: dict[Sampling, list[tuple[_Job, int]]] = {}
      for job in jobs:  # rows of one job may land in several batches; its future resolves after the last
        groups.setdefault(job.sampling, []).extend((job, i) for i in range(len(job.rows)))
      for sampling, refs in groups.items():
        for start in range(0, len(refs), self.max_batch):
          self._run(sampling, refs[start:start + self.max_batch])

  def _run(self, sampling: Sampling, refs: list[tuple[_Job, int]]) -> None:
    try:
      prompts = [job.rows[i] for job, i in refs]
      max_new = bucket(max(job.max_tokens for job, _ in refs), MIN_NEW_TOKENS_BUCKET)
      out = self._decode(prompts + [prompts[0]] * (self.max_batch - len(prompts)), max_new, sampling)
      self.batches += 1
    except Exception as e:  # reported to every waiting request
      logger.exception("generation failed")
      for job, _ in refs:
        if not job.future.done():
          job.future.set_exception(e)
      return
    eos = self.vocab.eos_id
    for (job, i), row in zip(refs, out, strict=False):
      row = row.tolist()[: job.max_tokens]
      end = next((k for k, t in enumerate(row) if t in (eos, 0)), len(row))
      job.results[i] = Generation(row[:end], end < len(row) and row[end] == eos)
      job.left -= 1
      if job.left == 0 and not job.future.done():
        job.future.set_result(job.results)

  def _decode(self, prompts: list[list[int]], max_new: int, s: Sampling) -> np.ndarray:
    """interface.generate, with power-of-two prompt-length buckets (BOS counted for decoder-only)."""
    seed = s.seed if s.seed is not None else (self._seed + self.batches) % (2**31)
    pad = bucket(max(self.iface.padded_prompt_length(max(len(p) for p in prompts)), 1), MIN_LENGTH_BUCKET)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self.iface.generate(self.params, prompts, max_new_tokens=max_new, eos_id=self.vocab.eos_id,
                                 temperature=0.0 if s.greedy else s.temperature, top_k=0 if s.greedy else s.top_k,
                                 top_p=1.0 if s.greedy else s.top_p, seed=seed, pad_multiple=pad)


def parse_mesh_shape(text: str) -> tuple[int, ...]:
  """"-1,1,1" -> (-1, 1, 1), or a UserError naming the flag."""
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise UserError(f"--mesh_shape {text!r}: expected comma-separated integers such as -1,1,1") from None
