"""Two local processes (4 CPU devices each) joined by jax.distributed train like one process with 8."""

import signal
import socket
import time

import numpy as np
import pytest
from train_runs import assert_trees_equal, checkpoint_state, losses, spawn, train, wait_for_step

from itjax.train.checkpoints import complete_steps

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _spawn_hosts(model_dir, *extra):
  port = _free_port()
  return [spawn(model_dir, *extra, f"--gin.initialize_distributed.coordinator_address=localhost:{port}",
                "--gin.initialize_distributed.num_processes=2", f"--gin.initialize_distributed.process_id={i}",
                devices=4, log_name=f"log{i}.txt") for i in range(2)]


def _wait_all(procs, timeout: float = 600) -> list[int]:
  deadline = time.time() + timeout
  try:
    return [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
  finally:
    for p in procs:
      p.kill()


def test_two_processes_match_one_and_resume_on_one(tmp_path):
  """Same losses as one 8-device process reading the same 2 data shards; the 2-host checkpoint then
  resumes on 1 host (still reading 2 shards, from the checkpoint) and continues the same run."""
  ref = tmp_path / "one"
  assert train(ref, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_PERIOD=2", "--gin.train.data_shards=2") == 0
  d = tmp_path / "two"
  codes = _wait_all(_spawn_hosts(d, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2"))
  assert codes == [0, 0], (tmp_path / "log1.txt").read_text()[-3000:]
  got, want = losses(d), losses(ref)
  assert sorted(got) == [1, 2, 3, 4, 5, 6]
  assert len((d / "metrics.jsonl").read_text().splitlines()) == 6  # process 0 alone writes summaries
  np.testing.assert_allclose([got[s] for s in got], [want[s] for s in got], rtol=1e-5)
  assert_trees_equal(checkpoint_state(d)["params"], checkpoint_state(ref, 6)["params"], atol=1e-5)
  assert train(d, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_PERIOD=2") == 0
  got = losses(d)
  np.testing.assert_allclose([got[7], got[8]], [want[7], want[8]], rtol=1e-5)


def test_sigterm_on_one_host_stops_both_at_the_same_step(tmp_path):
  """JAX's preemption service spreads the notice; both hosts save the agreed step and exit 0."""
  d = tmp_path / "run"
  procs = _spawn_hosts(d, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=1000")
  try:
    wait_for_step(d, procs[0], 3)
    procs[1].send_signal(signal.SIGTERM)
  finally:
    codes = _wait_all(procs, timeout=180)
  assert codes == [0, 0]
  last = max(losses(d))
  assert complete_steps(d / "checkpoints") == [last]
  assert int(checkpoint_state(d)["step"]) == last
