"""Training observability: TensorBoard scalars, metrics.jsonl and a progress bar.

Only process 0 writes; other hosts get a writer that does nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
from tqdm import tqdm
from tqdm.std import EMA


def _drop_partial_line(path: str) -> None:
  """A run killed mid-write can leave half a line; the next run's records must start on a new one."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    size = f.seek(0, os.SEEK_END)
    tail_start = max(0, size - (1 << 16))  # records are far shorter than this
    f.seek(tail_start)
    tail = f.read()
    if tail and not tail.endswith(b"\n"):
      f.truncate(tail_start + tail.rfind(b"\n") + 1 if b"\n" in tail else tail_start)


def _drop_steps_after(path: str, step: int) -> None:
  """A resumed run replays the steps after its checkpoint: their records from the lost run are removed first, so
  that each step is written once (rewritten atomically; a line that is not a record is kept)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()

  def after(line: str) -> bool:
    try:
      return int(json.loads(line).get("step", -1)) > step
    except (ValueError, TypeError, AttributeError):
      return False

  keep = [line for line in lines if not after(line)]
  if len(keep) < len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)


def latest_per_step(records: list[dict]) -> dict[int, dict]:
  """Records of metrics.jsonl merged per step (train and eval scalars are separate records).

  Each step's train record is written once (a resume first drops the replayed steps' records); should a
  file still hold two, the later value wins.
  """
  out: dict[int, dict] = {}
  for r in records:
    out.setdefault(r["step"], {}).update(r)
  return out


def read_metrics(model_dir: str) -> dict[int, dict]:
  """MODEL_DIR/metrics.jsonl as {step: merged record}."""
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return latest_per_step([json.loads(line) for line in f if line.strip()])


class MetricsWriter:
  """Writes MODEL_DIR/train/ (TensorBoard) and MODEL_DIR/metrics.jsonl."""

  def __init__(self, model_dir: str, total_steps: int, start_step: int, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.start = time.time()
    self._clock_started = False  # the bar's clock restarts once, at the first step
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # local: heavy import, process 0 only

    # purge_step: TensorBoard discards the events the lost run wrote after the checkpoint resumed from.
    self.tb = SummaryWriter(os.path.join(model_dir, "train"), purge_step=start_step + 1 if start_step else None)
    path = os.path.join(model_dir, "metrics.jsonl")
    _drop_partial_line(path)
    _drop_steps_after(path, start_step)
    self.jsonl = open(path, "a")
    self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", file=sys.stdout,
                    dynamic_ncols=True, mininterval=1.0)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """The train metrics of `step` (and the progress bar's loss and tokens/s)."""
    self.write_scalars(step, metrics)
    if self.enabled:
      self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics.get('tokens_per_s', 0):.0f}",
                           refresh=False)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    """A record of other scalars (e.g. eval scores) for `step`, beside its train metrics."""
    if not self.enabled:
      return
    for k, v in scalars.items():
      self.tb.add_scalar(k, v, step)
    self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self.jsonl.flush()

  def advance(self, steps: int) -> None:
    if not self.enabled:
      return
    first = not self._clock_started
    self._clock_started = True
    self.bar.update(steps)
    if first:
      # The first steps include start-up (building the stream, compiling): the rate and ETA count from here.
      # tqdm keeps its clock and smoothed rates in these attributes.
      b = self.bar
      b.start_t = b.last_print_t = b._time()  # noqa: SLF001
      b.initial, b.last_print_n = b.n, b.n
      b._ema_dn, b._ema_dt = EMA(b.smoothing), EMA(b.smoothing)  # noqa: SLF001

  def close(self) -> None:
    if self.enabled and not self.jsonl.closed:
      self.bar.close()
      self.tb.close()
      self.jsonl.close()
