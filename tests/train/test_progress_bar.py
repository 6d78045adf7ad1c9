"""The training progress bar's rate and ETA leave out start-up (stream building, compilation)."""

import time

from itjax.train.summaries import MetricsWriter


def test_eta_counts_from_the_first_step(tmp_path):
  w = MetricsWriter(str(tmp_path), total_steps=100, start_step=0, enabled=True)
  try:
    time.sleep(1.0)  # start-up before the first step
    w.advance(1)
    for _ in range(4):
      w.advance(1)
    d = w.bar.format_dict
    assert d["n"] == 5 and d["elapsed"] < 0.5  # without the fix: elapsed > 1 s and the rate < 5 steps/s
    assert d["rate"] is None or d["rate"] > 5
  finally:
    w.close()


def test_the_clock_restarts_once_not_at_every_step(tmp_path):
  """Elapsed time keeps growing after the first step (restarting it at every update showed only the last gap)."""
  w = MetricsWriter(str(tmp_path), total_steps=100, start_step=0, enabled=True)
  try:
    w.advance(1)
    for _ in range(3):
      time.sleep(0.3)
      w.advance(1)
    d = w.bar.format_dict
    assert d["n"] == 4 and d["elapsed"] >= 0.85, d["elapsed"]
  finally:
    w.close()
