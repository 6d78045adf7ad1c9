"""Greedy generation of text for prompt token ids, in fixed-size batches (one compilation), and the progress
lines of long evaluation phases.

With several processes (`jax.process_count() > 1`) every process holds every row and runs the same
batches: each is one global computation whose rows are spread over all devices (as training batches
are), and its output is gathered so that every process, process 0 included, has every prediction.
Reads no task data, so `itjax infer` imports neither TensorFlow nor seqio.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

from itjax.models.decoding import strip_eos
from itjax.models.families import interface_for

log = logging.getLogger("itjax")
PROGRESS_EVERY_S = 10.0


def duration(seconds: float) -> str:
  """A short duration: "41 s", "2 min", "1 h 05 min"."""
  if seconds < 60:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{seconds / 60:.0f} min"
  return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def say(message: str) -> None:
  """An INFO line on the "itjax" logger (the CLI prints it as "itjax: ..."); on stderr when nothing handles the
  logger, so that progress shows on a console either way. Process 0 only."""
  if jax.process_index() != 0:
    return
  if log.isEnabledFor(logging.INFO) and log.hasHandlers():
    log.info("%s", message)
  else:
    print(f"itjax: {message}", file=sys.stderr, flush=True)


class Progress:
  """Progress of a long loop, said at most every `every_s` seconds (and at the end, when it took that long):
  "eval held-out: generation 1,280/5,120 rows (25%), 41 s, ETA 2 min"."""

  def __init__(self, label: str, total: int, unit: str = "rows", every_s: float | None = None,
               clock: Callable[[], float] = time.monotonic, emit: Callable[[str], None] = say):
    self.label, self.total, self.unit = label, total, unit
    self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
    self.clock, self.emit = clock, emit
    self.start = self.last = clock()

  def update(self, done: int, detail: str = "") -> None:
    """`done` of the total are finished; says so when `every_s` passed since the last line."""
    now = self.clock()
    if now - self.last < self.every_s or done >= self.total:
      return
    self.last = now
    elapsed = now - self.start
    eta = elapsed * (self.total - done) / done if done else None
    self.emit(f"{self.label} {done:,}/{self.total:,} {self.unit} ({100 * done / max(self.total, 1):.0f}%), "
              f"{duration(elapsed)}" + (f", ETA {duration(eta)}" if eta is not None else "")
              + (f" ({detail})" if detail else ""))

  def finish(self) -> None:
    elapsed = self.clock() - self.start
    if elapsed >= self.every_s:
      self.emit(f"{self.label} {self.total:,} {self.unit} done in {duration(elapsed)}")


def predict(model: Any, params: Any, rows: list[dict], vocab: Any, *, batch_size: int,
            max_new_tokens: int, progress: str = "generation") -> list[str]:
  """Greedy continuations of each row's prompt (its `input_ids`, as the model was trained), decoded to text.

  `model` is a model interface (or a config / module of any family); `vocab` anything with encode /
  decode / eos_id (a seqio vocabulary or an `itjax.core.tokenizer.Tokenizer`). Call inside the mesh /
  logical-axis-rules context that the params are sharded for. `progress`: the label of the progress lines.
  """
  iface = interface_for(model)
  preds = []
  bar = Progress(progress, len(rows))
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    prompts = [r["input_ids"] for r in chunk]
    prompts += [prompts[-1]] * (batch_size - len(prompts))  # full batches: one compilation
    out = iface.generate(params, prompts, max_new_tokens=max_new_tokens, eos_id=vocab.eos_id)[: len(chunk)]
    preds += [vocab.decode(strip_eos(o, vocab.eos_id)) for o in out]
    bar.update(len(preds), chunk[-1].get("task", ""))
  bar.finish()
  return preds
