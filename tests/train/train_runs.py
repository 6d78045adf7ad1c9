"""Helpers for tests that drive tiny `itjax train` runs, in-process or as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from itjax.cli import main
from itjax.core.checkpoints import complete_steps
from itjax.train.summaries import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "tests", "tiny.gin")
# The reference setting of these tests: no eval, every checkpoint kept, MFU against a made-up peak.
REF_STEPS = 16  # the shared reference run (conftest.py)
BASE = ["--gin.EVAL_MIXTURES=None", "--gin.checkpoint_settings.keep=None"]


def train_args(model_dir, *extra: str) -> list[str]:
  return ["train", f"--gin_file={TINY}", f"--model_dir={model_dir}", *BASE, *extra]


def train(model_dir, *extra: str) -> int:
  """In-process `itjax train`; returns its exit status."""
  return main(train_args(model_dir, *extra))


def spawn(model_dir, *extra: str, devices: int = 8, env: dict | None = None, log_name: str = "log.txt",
          record: str | None = None):
  """`python -m itjax.cli train ...` as a subprocess (output in MODEL_DIR/../<log_name>).

  record: a JSONL file where the run notes the data shards it opens and the rows it reads (`record_reads`).
  """
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
  os.makedirs(model_dir, exist_ok=True)
  out = open(os.path.join(os.path.dirname(os.path.abspath(model_dir)), log_name), "wb")
  entry = ["-m", "itjax.cli"] if record is None else [os.path.abspath(__file__), str(record)]
  return subprocess.Popen([sys.executable, *entry, *train_args(model_dir, *extra)], cwd=REPO, env=env,
                          stdout=out, stderr=subprocess.STDOUT)


def _append(path, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


@contextlib.contextmanager
def record_reads(path):
  """While open, `itjax train` in this process appends to `path` each data shard it opens
  ({"process", "shard_index", "num_shards"}) and each batch of rows it reads ({"process", "rows"}: the
  decoder target tokens of this process's rows)."""
  from itjax.train import trainer

  open_dataset, batches = trainer.train_dataset, trainer.host_batches

  def train_dataset(*args, **kwargs):
    _append(path, {"process": jax.process_index(), "shard_index": kwargs["shard_index"],
                   "num_shards": kwargs["num_shards"]})
    return open_dataset(*args, **kwargs)

  class Recorded:  # the trainer's stream (saved and restored as usual), recording each batch it hands out
    def __init__(self, stream):
      self.stream = stream
      self.state, self.restore = stream.state, stream.restore

    def __iter__(self):
      return self

    def __next__(self):
      batch = next(self.stream)
      _append(path, {"process": jax.process_index(), "rows": batch["decoder_target_tokens"].tolist()})
      return batch

  def host_batches(*args, **kwargs):
    return Recorded(batches(*args, **kwargs))

  trainer.train_dataset, trainer.host_batches = train_dataset, host_batches
  try:
    yield
  finally:
    trainer.train_dataset, trainer.host_batches = open_dataset, batches


def read_records(path) -> tuple[list[dict], list[list[list[int]]]]:
  """(the shards opened, the rows of each batch read) from a `record_reads` file."""
  with open(path) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if "shard_index" in r], [r["rows"] for r in records if "rows" in r]


def wait_for_step(model_dir, proc, step: int, timeout: float = 300) -> int:
  """Polls metrics.jsonl until a record of `step` or later appears; returns the step seen."""
  path = os.path.join(model_dir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"training exited early with {proc.returncode}")
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
      if steps and max(steps) >= step:
        return max(steps)
    time.sleep(0.01)
  raise AssertionError(f"no step {step} within {timeout}s")


def losses(model_dir) -> dict[int, float]:
  """The latest loss logged for each step (a resumed run repeats the steps after its checkpoint)."""
  return {s: r["loss"] for s, r in sorted(read_metrics(model_dir).items()) if "loss" in r}


def checkpoint_state(model_dir, step: int | None = None) -> dict:
  """A checkpoint's state as numpy arrays (the latest complete one by default)."""
  d = os.path.join(model_dir, "checkpoints")
  step = complete_steps(d)[-1] if step is None else step
  path = os.path.join(d, str(step), "state")
  ckptr = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                    ckptr.metadata(path).item_metadata.tree)
  return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def assert_trees_equal(a, b, atol: float = 0.0) -> None:
  flat_a, tree_a = jax.tree_util.tree_flatten(a)
  flat_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b, strict=True):
    if atol:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=atol)
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


if __name__ == "__main__":  # python train_runs.py RECORD_FILE train ARGS...: `itjax ...` that records its reads
  with record_reads(sys.argv[1]):
    sys.exit(main(sys.argv[2:]))
