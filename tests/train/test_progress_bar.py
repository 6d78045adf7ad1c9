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


def test_a_resumed_writer_drops_the_replayed_steps(tmp_path):
  """metrics.jsonl keeps one record per step; TensorBoard is told to purge the lost run's events after the
  resumed step (a SessionLog START at that step, which TensorBoard honours)."""
  import json
  import os

  import tensorflow as tf

  first = MetricsWriter(str(tmp_path), total_steps=10, start_step=0, enabled=True)
  for step in range(1, 7):
    first.write(step, {"loss": float(step)})
  first.close()
  resumed = MetricsWriter(str(tmp_path), total_steps=10, start_step=3, enabled=True)  # checkpoint 3
  for step in range(4, 7):
    resumed.write(step, {"loss": 10.0 + step})
  resumed.close()
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1), (2, 2), (3, 3), (4, 14), (5, 15), (6, 16)]
  files = [os.path.join(tmp_path, "train", f) for f in os.listdir(tmp_path / "train")]
  starts = [e.step for f in files for e in tf.compat.v1.train.summary_iterator(f)
            if e.HasField("session_log") and e.session_log.status == e.session_log.START]
  assert starts == [4]  # only the resumed writer asks for a purge, from step 4 on
