"""Two local processes (4 CPU devices each) joined by jax.distributed train like one process with 8.

All slow (each test starts two JAX processes; the evaluation ones share a module fixture of about
3 to 4 minutes on a shared 2-core machine): run with `-m slow`.
"""

import json
import os
import signal
import socket
import time

import numpy as np
import pytest
from train_runs import (
  assert_trees_equal,
  checkpoint_state,
  losses,
  read_records,
  record_reads,
  spawn,
  train,
  wait_for_step,
)

from itjax.cli import main
from itjax.core.checkpoints import complete_steps

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _spawn_hosts(model_dir, *extra, record_dir=None):
  port = _free_port()
  return [spawn(model_dir, *extra, f"--gin.initialize_distributed.coordinator_address=localhost:{port}",
                "--gin.initialize_distributed.num_processes=2", f"--gin.initialize_distributed.process_id={i}",
                devices=4, log_name=f"log{i}.txt",
                record=None if record_dir is None else os.path.join(record_dir, f"read{i}.jsonl")) for i in range(2)]


def _wait_all(procs, timeout: float = 600) -> list[int]:
  deadline = time.time() + timeout
  try:
    return [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
  finally:
    for p in procs:
      p.kill()


def test_two_processes_match_one_and_resume_on_one(tmp_path, capsys):
  """Same losses as one 8-device process reading the same 2 data shards; the 2-host checkpoint then
  resumes on 1 host (still reading 2 shards, restoring both hosts' saved stream states: the documented
  policy when the new process count divides the shards) and continues the same run."""
  ref = tmp_path / "one"
  assert train(ref, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_PERIOD=2", "--gin.stream_settings.data_shards=2") == 0
  d = tmp_path / "two"
  codes = _wait_all(_spawn_hosts(d, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2"))
  assert codes == [0, 0], (tmp_path / "log1.txt").read_text()[-3000:]
  got, want = losses(d), losses(ref)
  assert sorted(got) == [1, 2, 3, 4, 5, 6]
  assert len((d / "metrics.jsonl").read_text().splitlines()) == 6  # process 0 alone writes summaries
  np.testing.assert_allclose([got[s] for s in got], [want[s] for s in got], rtol=1e-5)
  assert_trees_equal(checkpoint_state(d)["params"], checkpoint_state(ref, 6)["params"], atol=1e-5)
  assert sorted(os.listdir(d / "checkpoints" / "6" / "data")) == [
      "commit_success.txt", "counts-process-00000-of-00002.json", "counts-process-00001-of-00002.json",
      "shard-00000-of-00002.tfdata", "shard-00001-of-00002.tfdata"]  # each process wrote its own
  capsys.readouterr()
  assert train(d, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_PERIOD=2") == 0
  assert "restoring its saved state (2 data shards): continuing exactly at batch 6" in capsys.readouterr().err
  got = losses(d)
  np.testing.assert_allclose([got[7], got[8]], [want[7], want[8]], rtol=1e-5)


def test_sigterm_on_one_host_stops_both_at_the_same_step(tmp_path):
  """JAX's preemption service spreads the notice; both hosts save the agreed step and exit 75 (requeue)."""
  d = tmp_path / "run"
  procs = _spawn_hosts(d, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=1000")
  try:
    wait_for_step(d, procs[0], 3)
    procs[1].send_signal(signal.SIGTERM)
  finally:
    codes = _wait_all(procs, timeout=180)
  assert codes == [75, 75]
  last = max(losses(d))
  assert complete_steps(d / "checkpoints") == [last]
  assert int(checkpoint_state(d)["step"]) == last


EVAL = "--gin.EVAL_MIXTURES={'held-out': 'proc_color_nli_zs_opt', 'seen': 'proc_add_zs_noopt'}"
FSDP = "--gin.create_mesh.mesh_shape=(1, 8, 1)"  # every parameter split over both processes' devices
STEPS = 2


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
  """STEPS steps and the end-of-training evaluation on 1 process (8 devices, 2 data shards) and on 2
  (4 devices each), both recording the data they read."""
  root = tmp_path_factory.mktemp("multihost_eval")
  args = (f"--gin.TRAIN_STEPS={STEPS}", f"--gin.CHECKPOINT_PERIOD={STEPS}", EVAL, FSDP)
  with record_reads(root / "read_one.jsonl"):
    assert train(root / "one", *args, "--gin.stream_settings.data_shards=2") == 0
  codes = _wait_all(_spawn_hosts(root / "two", *args, record_dir=root))
  assert codes == [0, 0], (root / "log1.txt").read_text()[-3000:] + (root / "log0.txt").read_text()[-3000:]
  return root


def _report(run_dir, name: str = "heldout") -> dict:
  return json.loads((run_dir / "eval" / name / "report.json").read_text())


def _predictions(run_dir) -> list[dict]:
  with open(run_dir / "eval" / "heldout" / "predictions.jsonl") as f:
    return [json.loads(line) for line in f]


def test_eval_on_two_processes_matches_one(eval_runs):
  """Generation and rank classification as global computations, gathered to process 0: the same report."""
  one, two = eval_runs / "one", eval_runs / "two"
  assert _report(two)["sets"] == _report(one)["sets"]
  got, want = _predictions(two), _predictions(one)
  assert len(got) == len(want) > 0
  for g, w in zip(got, want, strict=True):
    for key, value in w.items():
      if key == "outputs":  # per checkpoint: prediction, option, option_norm, loglik
        for ck, out in value.items():
          assert {k: v for k, v in g[key][ck].items() if k != "loglik"} == {k: v for k, v in out.items()
                                                                              if k != "loglik"}
          np.testing.assert_allclose(g[key][ck].get("loglik", []), out.get("loglik", []), atol=1e-3)
      else:
        assert g[key] == value
  assert "report:" in (eval_runs / "log0.txt").read_text()
  assert "report:" not in (eval_runs / "log1.txt").read_text()  # process 1 computes but writes nothing


def test_each_process_reads_a_disjoint_shard_of_the_global_batch(eval_runs):
  shards_one, rows_one = read_records(eval_runs / "read_one.jsonl")
  shards = [read_records(eval_runs / f"read{i}.jsonl") for i in range(2)]
  assert sorted((r["shard_index"], r["num_shards"]) for r in shards_one) == [(0, 2), (1, 2)]
  for i, (opened, rows) in enumerate(shards):
    assert [(r["process"], r["shard_index"], r["num_shards"]) for r in opened] == [(i, i, 2)]
    assert len(rows) == STEPS and all(len(batch) == 4 for batch in rows)  # 8 rows / 2 processes
  for step in range(STEPS):
    rows0, rows1 = shards[0][1][step], shards[1][1][step]
    assert not {tuple(r) for r in rows0} & {tuple(r) for r in rows1}
    assert rows0 + rows1 == rows_one[step]  # the global batch is the 1-process batch, in order


def test_checkpoint_written_by_both_processes_restores_on_one(eval_runs, tmp_path):
  one, two = eval_runs / "one", eval_runs / "two"
  step_dir = two / "checkpoints" / str(STEPS)
  assert complete_steps(two / "checkpoints") == [STEPS]
  for i in range(2):  # each process wrote its own parameter shards; process 0 committed
    assert os.listdir(step_dir / "state" / f"ocdbt.process_{i}" / "d")
  assert (step_dir / "commit_success.txt").is_file()
  assert_trees_equal(checkpoint_state(two)["params"], checkpoint_state(one)["params"], atol=1e-5)
  out = tmp_path / "eval_on_one"
  assert main(["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{two}'", EVAL, FSDP,
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}", "--gin.eval_settings.batch_size=8",
               "--gin.eval_settings.max_new_tokens=4", "--gin.eval_settings.max_examples_per_task=2",
               f"--gin.evaluate.output_dir='{out}'"]) == 0
  restored = json.loads((out / "report.json").read_text())["sets"]
  trained = _report(two)["sets"]
  for set_name, res in trained.items():
    for metric, by_ck in res["overall"].items():
      assert restored[set_name]["overall"][metric]["checkpoint"] == by_ck[f"step_{STEPS}"], (set_name, metric)


ONE_HOST_FAILS = '''
"""A task whose source fails on process 1 only, mid-run."""
import itertools
import jax
from itjax.data.sources import procedural_source
from itjax.data.tasks import register_instruction_task
from itjax.data.templates import Template

count = itertools.count()


def generate(rng):
  if jax.process_index() == 1 and next(count) > 300:
    raise RuntimeError("process 1's data source broke")
  return {"x": str(rng.randint(0, 99)), "answer": "ok"}


register_instruction_task("crash_one", "c", procedural_source(generate, ("x",), {"train": 100000}, seed=0),
                          [Template("Say {x}")], fields=("x",), has_options=False, shuffle_buffer_size=16)
'''


def test_when_one_host_fails_both_exit_in_bounded_time(tmp_path):
  """A crash on one process must not leave the other waiting in a collective forever (it would hold the slice)."""
  module = tmp_path / "crash_one_tasks.py"
  module.write_text(ONE_HOST_FAILS)
  d = tmp_path / "run"
  start = time.time()
  procs = _spawn_hosts(d, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=5", f"--tasks_module={module}",
                       "--gin.MIXTURE_OR_TASK_NAME='crash_one_zs_noopt'")
  codes = _wait_all(procs, timeout=300)
  assert codes[1] != 0 and codes[0] != 0, codes
  assert "process 1's data source broke" in (tmp_path / "log1.txt").read_text()
  print(f"both processes exited {time.time() - start:.0f} s after start: {codes}")
