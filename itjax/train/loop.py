"""The training loop's bookkeeping: preemption, metric windows, timing, the finiteness guard, checkpoints.

SIGTERM (a preemption notice; on several hosts JAX's preemption service agrees on the step) asks
the loop to save the current step and stop. A non-finite loss, gradient or state stops the run with
`NonFiniteError` naming the step, before any checkpoint of that state is written.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import numpy as np
from jax.experimental import multihost_utils

from itjax.core.checkpoints import Checkpointer
from itjax.core.trainable import TrainState
from itjax.errors import UserError
from itjax.train import perf
from itjax.train.summaries import MetricsWriter

if TYPE_CHECKING:  # the loop only calls its scalars() and log(); it need not import TensorFlow
  from itjax.data.stream_stats import StreamStats


class NonFiniteError(FloatingPointError, UserError):
  """The loss, gradients or updated state became NaN/inf; nothing from that step on was checkpointed."""


class Preemption:
  """SIGTERM -> stop at an agreed step: a flag with one process, JAX's preemption service with several."""

  def __init__(self, multiprocess: bool):
    self.multiprocess = multiprocess
    self.requested = False
    self._old = None

  def __enter__(self):
    if not self.multiprocess:  # JAX's own SIGTERM notifier must keep the signal with several processes
      try:
        self._old = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        self._old = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Called once per step, at the same steps on every process."""
    if self.multiprocess and not self.requested:
      try:
        self.requested = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # preemption service disabled (jax_enable_preemption_service=False)
        pass
    return self.requested

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


class Loop:
  """The loop's bookkeeping: metric windows, timing, the finiteness guard and checkpoint metadata."""

  def __init__(self, *, model_dir: str, ckpt: Checkpointer, writer: MetricsWriter, start: int, start_batch: int,
               seed: int, data_shards: int, num_params: int, peak_flops: float | None, meta: dict | None = None,
               stream_stats: StreamStats | None = None, data_state: Callable[[], dict[str, bytes]] | None = None,
               data_seed: int | None = None):
    self.model_dir, self.ckpt, self.writer = model_dir, ckpt, writer
    self.stream_stats, self.data_state = stream_stats, data_state  # data_state: this process's stream blobs
    self.data_seed = seed if data_seed is None else data_seed  # the stream's seed ("fresh" resumes change it)
    self.meta = meta or {}  # extra checkpoint metadata (PEFT: the base reference)
    self.start, self.start_batch, self.seed, self.data_shards = start, start_batch, seed, data_shards
    self.num_params, self.peak_flops = num_params, peak_flops
    self.pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet logged
    self.verified = start  # every step <= this one had finite loss and state
    self.metrics: dict = {}
    self.t_start = time.time()
    self.window_t0, self.window_steps, self.window_tokens, self.window_wait = self.t_start, 0, 0.0, 0.0
    self.first_step_s: float | None = None

  def stepped(self, step: int, m: dict, tokens: float, data_wait: float = 0.0) -> None:
    """Notes a dispatched step: its metrics, its tokens and how long it waited for its batch."""
    self.pending.append((step, m))
    if step == self.start + 1:  # time compilation apart from steady-state steps
      jax.block_until_ready(m["loss"])
      self.first_step_s = time.time() - self.t_start
      self.window_t0 = time.time()
    else:
      self.window_steps += 1
      self.window_tokens += tokens
      self.window_wait += data_wait

  def verify(self, fetched: list[tuple[int, dict]] | None = None) -> None:
    """Raises NonFiniteError for the first unverified step whose loss or state is not finite."""
    todo = [(s, m) for s, m in self.pending if s > self.verified]
    if fetched is None:
      fetched = jax.device_get([(s, {"finite": m["finite"], "loss": m["loss"]}) for s, m in todo])
    for s, m in fetched:
      if s <= self.verified:
        continue
      if not bool(m["finite"]):
        self.ckpt.wait()
        what = "loss" if not np.isfinite(m["loss"]) else "gradients or parameters"
        raise NonFiniteError(f"non-finite {what} at step {s} (loss {float(m['loss'])}); stopped. Last good "
                             f"checkpoint: step {self.ckpt.latest_step()} in {self.ckpt.directory}")
      self.verified = s

  def log(self) -> None:
    """Fetches the pending steps' metrics, checks them, writes their mean (and timing) as one record."""
    if not self.pending:
      return
    fetched = jax.device_get(self.pending)
    step = fetched[-1][0]
    keys = [k for k in fetched[-1][1] if k != "finite"]
    metrics = {k: float(np.mean([m[k] for _, m in fetched])) for k in keys}
    if self.window_steps:
      elapsed = time.time() - self.window_t0
      # data_wait_fraction: of the window's time, how much the loop spent blocked on the next batch.
      metrics.update(step_time_s=elapsed / self.window_steps, tokens_per_s=self.window_tokens / elapsed,
                     data_wait_fraction=self.window_wait / elapsed)
      mfu = perf.mfu(self.num_params, metrics["tokens_per_s"], self.peak_flops, jax.device_count())
      if mfu is not None:
        metrics["mfu"] = mfu
    if self.stream_stats is not None:
      metrics.update(self.stream_stats.scalars())
    if self.first_step_s is not None:
      metrics["first_step_s"] = self.first_step_s  # compilation included
      self.first_step_s = None
    self.pending = []
    self.window_t0, self.window_steps, self.window_tokens, self.window_wait = time.time(), 0, 0.0, 0.0
    self.writer.write(step, metrics)
    self.writer.advance(len(fetched))
    self.metrics = metrics
    self.verify(fetched)

  def write_eval(self, step: int, metrics: dict[str, float], seconds: float) -> None:
    self.writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()} | {"eval/seconds": seconds})
    self.window_t0 += seconds  # eval time is not step time

  def checkpoint(self, step: int, state: TrainState, force: bool = False,
                 metrics: dict[str, float] | None = None) -> None:
    if not self.ckpt.due(step, force):
      return
    self.verify()
    data = self.data_state() if self.data_state is not None else None  # now: the stream moves on after this
    self.ckpt.save(step, state, {"data": {"batches": self.start_batch + step - self.start, "shards": self.data_shards,
                                          "seed": self.data_seed, "state": data is not None},
                                 "seed": self.seed, **self.meta},
                   force=force, metrics=metrics, data=data)
