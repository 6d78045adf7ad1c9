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
  assert_trees_equal(checkpoint_state(d), checkpoint_state(reference))
  assert os.path.isdir(ckpts / f"{last + 1}.incomplete")
  assert not any("orbax-checkpoint-tmp" in n for n in os.listdir(ckpts))


def test_sigterm_saves_the_current_step_and_exits_0(tmp_path):
  d = tmp_path / "run"
  proc = spawn(d, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=1000")
  try:
    seen = wait_for_step(d, proc, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
  finally:
    proc.kill()
  last_logged = max(losses(d))
  assert last_logged >= seen
  assert complete_steps(d / "checkpoints") == [last_logged]
  with open(d / "checkpoints" / str(last_logged) / "meta" / "metadata") as f:
    assert json.load(f)["data"]["batches"] == last_logged
  assert int(checkpoint_state(d)["step"]) == last_logged


def _resume_copy(reference, d, step: int) -> None:
  os.makedirs(d / "checkpoints")
  shutil.copytree(reference / "checkpoints" / str(step), d / "checkpoints" / str(step))


def test_resume_on_another_mesh_continues_the_run(reference, tmp_path):
  """Checkpoint 8 of an (8, 1, 1) run, resumed on (2, 4, 1): params resharded (fsdp=4) on load."""
  d = tmp_path / "run"
  _resume_copy(reference, d, 8)
  assert train(d, "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=2", "--gin.create_mesh.mesh_shape=(2,4,1)") == 0
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
