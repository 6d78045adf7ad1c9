"""The trainer's robustness claims on real runs: kill/restart exactness, SIGTERM, incomplete checkpoints,
a different mesh on resume, and the NaN guard."""

import json
import os
import random
import re
import shutil
import signal

import jax
import numpy as np
import pytest
from train_runs import REF_STEPS, assert_trees_equal, checkpoint_state, losses, spawn, train, wait_for_step

from itjax.core.checkpoints import complete_steps


def test_sigkill_and_restart_match_uninterrupted_run(reference, tmp_path):
  """SIGKILL at a random step, plus a half-written and an uncommitted step dir: the restart still
  reproduces the uninterrupted run bit for bit."""
  seed = int(os.environ.get("ITJAX_KILL_SEED", random.randrange(1 << 30)))
  kill_after = random.Random(seed).randint(4, 11)
  d = tmp_path / "run"
  proc = spawn(d, f"--gin.TRAIN_STEPS={REF_STEPS}", "--gin.CHECKPOINT_PERIOD=2")
  try:
    seen = wait_for_step(d, proc, kill_after)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait(timeout=60)
  note = f"ITJAX_KILL_SEED={seed}: killed after step {seen}"
  assert proc.returncode == -signal.SIGKILL, note
  ckpts = d / "checkpoints"
  saved = complete_steps(ckpts)  # empty when killed before the first save committed
  last = saved[-1] if saved else 0
  assert last < REF_STEPS, note
  # What a save killed midway leaves, and a step dir without its commit marker (e.g. copied half-way):
  # restoring either would skip steps and change every later loss.
  if saved:
    shutil.copytree(ckpts / str(last), ckpts / str(last + 1))
    os.remove(ckpts / str(last + 1) / "commit_success.txt")
  else:
    os.makedirs(ckpts / str(last + 1) / "state")
  os.makedirs(ckpts / f"{last + 2}.orbax-checkpoint-tmp-1790000000" / "state")
  assert train(d, f"--gin.TRAIN_STEPS={REF_STEPS}", "--gin.CHECKPOINT_PERIOD=2") == 0
  assert losses(d) == losses(reference), note  # bitwise: the same floats
  with open(d / "metrics.jsonl") as f:  # the replayed steps are not written twice
    steps = [r["step"] for r in map(json.loads, f) if "loss" in r]
  assert steps == sorted(set(steps)), note
  assert_trees_equal(checkpoint_state(d), checkpoint_state(reference))
  assert os.path.isdir(ckpts / f"{last + 1}.incomplete")
  assert not any("orbax-checkpoint-tmp" in n for n in os.listdir(ckpts))


def test_sigterm_saves_the_current_step_and_exits_with_the_requeue_status(tmp_path):
  """Stopped before TRAIN_STEPS: saved, said so, and exit status 75 (train.preempted_exit_code), not 0."""
  d = tmp_path / "run"
  proc = spawn(d, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=1000")
  try:
    seen = wait_for_step(d, proc, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
  finally:
    proc.kill()
  log = (tmp_path / "log.txt").read_text()
  last_logged = max(losses(d))
  assert f"SIGTERM: saved step {last_logged} of 100000; the run is incomplete" in log and "(exit status 75)" in log
  assert last_logged >= seen
  assert complete_steps(d / "checkpoints") == [last_logged]
  with open(d / "checkpoints" / str(last_logged) / "meta" / "metadata") as f:
    assert json.load(f)["data"]["batches"] == last_logged
  assert int(checkpoint_state(d)["step"]) == last_logged


def _resume_copy(reference, d, step: int) -> None:
  os.makedirs(d / "checkpoints")
  shutil.copytree(reference / "checkpoints" / str(step), d / "checkpoints" / str(step))


def test_resume_on_another_mesh_continues_the_run(reference, tmp_path, capsys):
  """Checkpoint 8 of an (8, 1, 1) run, resumed on (2, 4, 1): params resharded (fsdp=4) on load, and the log says so."""
  d = tmp_path / "run"
  _resume_copy(reference, d, 8)
  assert train(d, "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=2", "--gin.create_mesh.mesh_shape=(2,4,1)") == 0
  err = capsys.readouterr().err
  assert re.search(r"resuming on another topology: step 8 was saved on mesh \w+=8 x \w+=1 x \w+=1 \(8 devices, "
                   r"1 processes\), this run has mesh \w+=2 x \w+=4 x \w+=1", err), err[-3000:]
  ref, got = losses(reference), losses(d)
  assert sorted(got) == [9, 10, 11, 12]
  np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-5)
  assert_trees_equal(checkpoint_state(d)["params"], checkpoint_state(reference, 12)["params"], atol=1e-5)


@pytest.mark.slow
def test_resume_on_a_tensor_parallel_mesh(tmp_path):
  """(8, 1, 1) -> (2, 2, 2), with a model whose kv heads and vocabulary split in two."""
  model = ["--gin.DecoderConfig.num_kv_heads=2", "--gin.DecoderConfig.vocab_size=264"]
  ref, d = tmp_path / "ref", tmp_path / "run"
  assert train(ref, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=3", *model) == 0
  _resume_copy(ref, d, 3)
  assert train(d, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=3", "--gin.create_mesh.mesh_shape=(2,2,2)",
               *model) == 0
  want, got = losses(ref), losses(d)
  assert sorted(got) == [4, 5, 6]
  np.testing.assert_allclose([got[s] for s in got], [want[s] for s in got], rtol=1e-5)
  assert_trees_equal(checkpoint_state(d)["params"], checkpoint_state(ref)["params"], atol=1e-5)


@pytest.mark.slow
def test_resume_with_fewer_devices(reference, tmp_path):
  """The same, as a subprocess with 4 devices instead of 8."""
  d = tmp_path / "run"
  _resume_copy(reference, d, 8)
  proc = spawn(d, "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=2", devices=4)
  assert proc.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()[-3000:]
  ref, got = losses(reference), losses(d)
  np.testing.assert_allclose([got[s] for s in range(9, 13)], [ref[s] for s in range(9, 13)], rtol=1e-5)
  assert_trees_equal(checkpoint_state(d)["params"], checkpoint_state(reference, 12)["params"], atol=1e-5)


def test_non_finite_loss_stops_naming_the_step_without_checkpointing_it(tmp_path, capsys):
  """A genuine divergence (learning rate 1e30); metrics are only logged at the end, so the guard that
  runs before every checkpoint is what catches it."""
  d = tmp_path / "run"
  assert train(d, "--gin.TRAIN_STEPS=10", "--gin.CHECKPOINT_PERIOD=1", "--gin.LEARNING_RATE=1e30",
               "--gin.train.log_every=100") == 2
  err = capsys.readouterr().err
  m = re.search(r"non-finite (loss|gradients or parameters) at step (\d+)", err)
  assert m, err
  bad = int(m.group(2))
  saved = complete_steps(d / "checkpoints")
  assert saved == list(range(1, bad)), err
  assert f"Last good checkpoint: step {bad - 1}" in err
  for s in saved:
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(checkpoint_state(d, s))
               if np.issubdtype(np.asarray(x).dtype, np.floating))


FAILING_SOURCE = '''
"""A task whose source fails after some examples: a crash in the data pipeline mid-run."""
import itertools
from itjax.data.sources import procedural_source
from itjax.data.tasks import register_instruction_task
from itjax.data.templates import Template

count = itertools.count()


def generate(rng):
  if next(count) > 300:
    raise RuntimeError("the data source broke")
  return {"x": str(rng.randint(0, 99)), "answer": "ok"}


register_instruction_task("crash_src", "c", procedural_source(generate, ("x",), {"train": 100000}, seed=0),
                          [Template("Say {x}")], fields=("x",), has_options=False, shuffle_buffer_size=16)
'''


@pytest.mark.parametrize("failure", [pytest.param("divergence", marks=pytest.mark.slow), "data_crash"])
def test_a_failed_run_exits_in_bounded_time(tmp_path, failure):
  """Async checkpointing, data prefetch threads and the metrics writer never keep a failed run alive: it exits
  within the limit, with 2 for a user-facing error and 1 (a traceback) for a crash."""
  d = tmp_path / "run"
  if failure == "divergence":
    extra = ["--gin.LEARNING_RATE=1e30", "--gin.train.log_every=100"]
  else:
    module = tmp_path / "crash_tasks.py"
    module.write_text(FAILING_SOURCE)
    extra = [f"--tasks_module={module}", "--gin.MIXTURE_OR_TASK_NAME='crash_src_zs_noopt'"]
  proc = spawn(d, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=1", *extra)
  try:
    code = proc.wait(timeout=240)
  finally:
    proc.kill()
  log = (tmp_path / "log.txt").read_text()
  if failure == "divergence":
    assert code == 2 and re.search(r"itjax: error: non-finite .* at step \d+", log), log[-2000:]
  else:
    assert code == 1 and "the data source broke" in log, log[-2000:]


def test_a_damaged_latest_checkpoint_is_refused_naming_it_and_the_previous_step(reference, tmp_path, capsys):
  """The documented policy: refuse (exit 2), naming the damaged step dir and the step that moving it aside resumes
  from; never a traceback from tensorstore, never a silent fallback."""
  d = tmp_path / "run"
  _resume_copy(reference, d, 6)
  shutil.copytree(reference / "checkpoints" / "8", d / "checkpoints" / "8")
  data = [os.path.join(r, f) for r, _, fs in os.walk(d / "checkpoints" / "8" / "state") for f in fs
          if os.path.basename(r) == "d"]  # the array data files (OCDBT)
  assert data
  for path in data:  # a disk that lost the second half of every data file
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  assert train(d, "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=2") == 2
  err = capsys.readouterr().err
  step8 = d / "checkpoints" / "8"
  assert f"itjax: error: checkpoint {step8} cannot be restored" in err, err[-3000:]
  assert f"mv {step8} {step8}.damaged) to resume from step 6" in err and "Traceback" not in err
  os.rename(step8, f"{step8}.damaged")  # what the message says to do
  assert train(d, "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=2") == 0
  assert losses(d) == {k: v for k, v in losses(reference).items() if 7 <= k <= 12}


def test_incomplete_checkpoints_follow_the_retention_of_complete_ones(tmp_path):
  from itjax.core.checkpoints import clean_incomplete

  for step in range(1, 6):
    os.makedirs(tmp_path / str(step) / "state")  # no commit marker: incomplete
  os.makedirs(tmp_path / "2.incomplete")  # moved aside by an earlier run
  clean_incomplete(str(tmp_path), keep=2)
  assert sorted(os.listdir(tmp_path)) == ["4.incomplete", "5.incomplete"]
