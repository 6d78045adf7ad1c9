"""Checkpointer and small trainer helpers without training: completeness, best-N retention, metrics file,
MFU and the distributed settings."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itjax.core import distributed
from itjax.core.checkpoints import Checkpointer, complete_steps, restore_params
from itjax.errors import UserError
from itjax.train import perf
from itjax.train.summaries import MetricsWriter, read_metrics


def _state(v: float) -> dict:
  return {"params": {"w": jnp.full((4, 2), v, jnp.float32)}, "step": jnp.int32(int(v))}


def _abstract():
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=jax.sharding.SingleDeviceSharding(
                                                                   jax.devices()[0])), _state(0))


def _save(d, steps, **kw) -> Checkpointer:
  ck = Checkpointer(str(d), period=1, keep=None, async_save=False, **kw)
  for s in steps:
    ck.save(s, _state(s), {"data": {"batches": s}})
  ck.wait()
  return ck


def test_incomplete_checkpoints_are_never_restored(tmp_path):
  ck = _save(tmp_path, [1, 2])
  ck.close()
  root = tmp_path / "checkpoints"
  # Step 3 copied without its commit marker; step 4 a save killed midway (Orbax's temporary dir).
  shutil.copytree(root / "2", root / "3")
  os.remove(root / "3" / "commit_success.txt")
  shutil.copytree(root / "2", root / "4.orbax-checkpoint-tmp")
  assert complete_steps(root) == [1, 2]
  ck = Checkpointer(str(tmp_path), period=1, keep=None, async_save=False)
  assert ck.latest_step() == 2
  state, meta = ck.restore(2, _abstract())
  assert float(state["params"]["w"][0, 0]) == 2.0 and meta["data"]["batches"] == 2
  assert sorted(os.listdir(root)) == ["1", "2", "3.incomplete"]
  # The step is free again: a later save of step 3 is a normal save.
  ck.save(3, _state(3), {"data": {"batches": 3}})
  ck.wait()
  assert ck.latest_step() == 3
  os.remove(root / "3" / "commit_success.txt")
  with pytest.raises(UserError, match="incomplete"):
    ck.restore(3, _abstract())
  ck.close()
  # restore_params (INITIAL_CHECKPOINT_PATH, eval) skips it too.
  params = restore_params(str(tmp_path), _abstract()["params"])
  assert float(params["w"][0, 0]) == 2.0


@pytest.mark.parametrize(("mode", "kept", "best"), [("max", [2, 5], 2), ("min", [1, 5], 1)])
def test_keeps_the_latest_and_the_best_by_metric(tmp_path, mode, kept, best):
  ck = Checkpointer(str(tmp_path), period=1, keep=1, async_save=False, best_metric="set/exact_match",
                    best_mode=mode, keep_best=1)
  scores = {1: 10.0, 2: 90.0, 3: 30.0, 4: None, 5: 40.0}
  for s, v in scores.items():
    ck.save(s, _state(s), {"data": {"batches": s}}, metrics=None if v is None else {"set/exact_match": v})
  ck.wait()
  assert ck.all_steps() == kept
  assert ck.best_step() == best
  ck.close()


def test_metrics_writer_drops_a_half_written_line(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo')
  w = MetricsWriter(str(tmp_path), 3, 1, enabled=True)
  w.write(2, {"loss": 1.5})
  w.write_scalars(2, {"eval/x/exact_match": 50.0})
  w.close()
  assert read_metrics(str(tmp_path)) == {1: {"step": 1, "loss": 2.0},
                                         2: {"step": 2, "loss": 1.5, "eval/x/exact_match": 50.0}}


def test_mfu():
  assert perf.known_peak_flops("cpu") is None
  assert perf.known_peak_flops("TPU v5 lite") == 197e12
  assert perf.known_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert perf.mfu(1_000_000, 1000.0, None, 8) is None
  np.testing.assert_allclose(perf.mfu(1_000_000, 1000.0, 1e12, 8), 6e9 / 8e12)


def test_distributed_settings(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TPU_WORKER_HOSTNAMES",
               "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize_distributed() is False and calls == []  # one process: nothing to do
  with pytest.raises(UserError, match="needs all of"):
    distributed.initialize_distributed(coordinator_address="localhost:1234")
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  distributed.initialize_distributed()
  assert calls == [{"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}]
  calls.clear()
  distributed.initialize_distributed(process_id=0)  # gin values win over the environment
  assert calls[0]["process_id"] == 0
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name)
  calls.clear()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")  # a TPU pod on GKE: JAX finds the rest
  distributed.initialize_distributed()
  assert calls == [{}]
