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


class MetricsWriter:
  """Writes MODEL_DIR/train/ (TensorBoard) and MODEL_DIR/metrics.jsonl."""

  def __init__(self, model_dir: str, total_steps: int, start_step: int, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.start = time.time()
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # local: heavy import, process 0 only

    self.tb = SummaryWriter(os.path.join(model_dir, "train"))
    self.jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a")
    self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", file=sys.stdout,
                    dynamic_ncols=True, mininterval=1.0)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in metrics.items():
      self.tb.add_scalar(k, v, step)
    self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
    self.jsonl.flush()
    self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics.get('tokens_per_s', 0):.0f}",
                         refresh=False)

  def advance(self, steps: int) -> None:
    if self.enabled:
      self.bar.update(steps)

  def close(self) -> None:
    if self.enabled:
      self.bar.close()
      self.tb.close()
      self.jsonl.close()
