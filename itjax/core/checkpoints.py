"""Orbax checkpoints in MODEL_DIR/checkpoints/<step>/: state, RNG, metadata and the data stream's state.

The `data` item holds named blobs that every process writes for itself (its data shards' iterator
states, `itjax.data.stream_state`), inside the same save: a step is complete with all of them or not at all.

Saves are asynchronous. A step counts only once complete: Orbax writes it to
`<step>.orbax-checkpoint-tmp` and renames it when done (on object stores it
writes `commit_success.txt` last instead). itjax requires that marker on every
filesystem too, so neither a save killed midway nor a half-copied step dir is
ever restored: the latest complete one is. When a `Checkpointer` opens the
directory, leftover temporary dirs are removed and incomplete step dirs moved
aside to `<step>.incomplete`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from itjax.core.distributed import sync
from itjax.errors import UserError

log = logging.getLogger("itjax")

ITEMS = ("state", "meta", "data")
COMMIT_MARKER = "commit_success.txt"  # orbax's atomicity_types.COMMIT_SUCCESS_FILE
TMP_SUFFIX = ".orbax-checkpoint-tmp"


class BlobsHandler(ocp.CheckpointHandler):
  """Writes each process's named blobs as files of the item directory (names must differ between processes)."""

  def save(self, directory: epath.Path, args: BlobsSave) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in args.blobs.items():
      (directory / name).write_bytes(blob)

  def restore(self, directory: epath.Path, args: BlobsRestore | None = None) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name != COMMIT_MARKER}


@ocp.args.register_with_handler(BlobsHandler, for_save=True)
@dataclasses.dataclass
class BlobsSave(ocp.args.CheckpointArgs):
  blobs: Mapping[str, bytes]


@ocp.args.register_with_handler(BlobsHandler, for_restore=True)
@dataclasses.dataclass
class BlobsRestore(ocp.args.CheckpointArgs):
  pass


def read_blob(step_dir: str, name: str) -> bytes | None:
  """One blob of a step's data item (None: not saved)."""
  path = epath.Path(step_dir) / "data" / name
  return path.read_bytes() if path.is_file() else None


def blob_names(step_dir: str) -> list[str]:
  """The blobs a step's data item holds (none for checkpoints saved without data state)."""
  d = epath.Path(step_dir) / "data"
  return sorted(p.name for p in d.iterdir() if p.name != COMMIT_MARKER) if d.is_dir() else []


def is_complete(step_dir: str) -> bool:
  """Whether a step dir holds a finished save: final name, commit marker (written last) and a state item."""
  return (TMP_SUFFIX not in os.path.basename(step_dir) and os.path.isfile(os.path.join(step_dir, COMMIT_MARKER))
          and os.path.isdir(os.path.join(step_dir, "state")))


def complete_steps(directory: str) -> list[int]:
  """Ascending steps of the complete checkpoints in a checkpoints/ directory."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and is_complete(os.path.join(directory, n)))


def clean_incomplete(directory: str, keep: int | None = None) -> list[str]:
  """Process 0 removes leftover temporary dirs and moves incomplete step dirs aside (keeping the `keep` latest of
  those, as for complete steps; None: all); returns what it moved or removed."""
  moved = []
  if jax.process_index() == 0 and os.path.isdir(directory):
    for n in sorted(os.listdir(directory)):
      p = os.path.join(directory, n)
      if TMP_SUFFIX in n and os.path.isdir(p):
        log.warning("removing unfinished checkpoint save %s", p)
        shutil.rmtree(p, ignore_errors=True)
        moved.append(p)
      elif n.isdigit() and os.path.isdir(p) and not is_complete(p):
        dest, k = p + ".incomplete", 1
        while os.path.exists(dest):
          dest, k = f"{p}.incomplete{k}", k + 1
        log.warning("checkpoint %s is incomplete (no %s); moved to %s", p, COMMIT_MARKER, dest)
        os.rename(p, dest)
        moved.append(p)
    if keep is not None:
      aside = sorted((n for n in os.listdir(directory) if ".incomplete" in n and n.split(".")[0].isdigit()),
                     key=lambda n: (int(n.split(".")[0]), n))
      for n in aside[:-keep]:
        log.warning("removing %s (keeping the %d latest incomplete checkpoints, as for complete ones)", n, keep)
        shutil.rmtree(os.path.join(directory, n), ignore_errors=True)
        moved.append(os.path.join(directory, n))
  sync("itjax_checkpoints_cleaned")
  return moved


def metric_value(metrics: Mapping[str, Any] | None, name: str) -> float:
  """`name`'s value in a checkpoint's metrics; NaN when missing (sorted as worst)."""
  v = (metrics or {}).get(name)
  return float(v) if v is not None else math.nan


class Checkpointer:
  """Wraps `ocp.CheckpointManager` with itjax's items: state, and JSON metadata.

  Keeps the `keep` latest checkpoints; with `best_metric`, also the
  `keep_best` best by that metric among saves given `metrics` (Orbax best_fn).
  """

  def __init__(self, model_dir: str, period: int = 1000, keep: int | None = 3, async_save: bool = True,
               best_metric: str | None = None, best_mode: str = "max", keep_best: int = 1):
    self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
    self.period = period
    self.best_metric = best_metric
    if best_mode not in ("max", "min"):
      raise UserError(f"best checkpoint mode {best_mode!r}: expected max or min")
    os.makedirs(self.directory, exist_ok=True)
    clean_incomplete(self.directory, keep)
    extra: dict[str, Any] = {"max_to_keep": keep}
    if best_metric:  # the `keep` latest, and the `keep_best` best of the checkpoints saved with metrics
      best_fn: Callable = lambda m: _rank(metric_value(m, best_metric), best_mode)
      policies = [ocp.checkpoint_managers.LatestN(n=keep),
                  ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, n=keep_best,
                                                keep_checkpoints_without_metrics=False)]
      extra = {"best_fn": best_fn, "best_mode": "max",
               "preservation_policy": ocp.checkpoint_managers.AnyPreservationPolicy(policies)}
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(save_interval_steps=period, enable_async_checkpointing=async_save,
                                             create=True, **extra))

  def all_steps(self) -> list[int]:
    """Complete checkpoints on disk (a save in flight is not one yet)."""
    return complete_steps(self.directory)

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """The best checkpoint by `best_metric` (the latest without one)."""
    return self.manager.best_step()

  def due(self, step: int, force: bool = False) -> bool:
    """Whether `save` would save `step`."""
    return (force or not step % self.period) and step not in self.manager.all_steps()

  def save(self, step: int, state: Any, meta: dict, force: bool = False,
           metrics: Mapping[str, float] | None = None, data: Mapping[str, bytes] | None = None) -> bool:
    """Saves every `period` steps (Orbax alone would also save the first step it sees), or when forced; `data`:
    this process's blobs for the data item."""
    if not self.due(step, force):  # off period, or already saved (the final save of a resumed, finished run)
      return False
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data is not None:
      items["data"] = BlobsSave(dict(data))
    return self.manager.save(step, args=ocp.args.Composite(**items),
                             metrics=dict(metrics) if metrics and self.best_metric else None, force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """State (resharded onto `abstract_state`'s shardings) and metadata of a complete step.

    A step that cannot be read (damaged files, or a model that no longer matches it) is refused, never skipped:
    the UserError names the step dir and the previous complete step, which moving this one aside resumes from.
    """
    step_dir = os.path.join(self.directory, str(step))
    if not is_complete(step_dir):
      raise UserError(f"checkpoint step {step} in {self.directory} is missing or incomplete")
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                               meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise bare Exceptions for unreadable data
      earlier = [s for s in self.all_steps() if s < step]
      resume = f"resume from step {earlier[-1]}" if earlier else "start again from step 0"
      reason = " ".join(str(e).split())[:300]
      raise UserError(f"checkpoint {step_dir} cannot be restored ({type(e).__name__}: {reason}). If its files are "
                      f"damaged, move it aside (mv {step_dir} {step_dir}.damaged) to {resume}; if the model or mesh "
                      "settings changed, use the run's config.gin") from None
    return out.state, out.meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _rank(value: float, mode: str) -> float:
  """Orbax keeps the largest best_fn values; missing metrics rank last."""
  if math.isnan(value):
    return -math.inf
  return value if mode == "max" else -value


def step_dir_of(path: str) -> str | None:
  """The step dir `path` means: itself (a step dir), else the latest complete one of MODEL_DIR or
  MODEL_DIR/checkpoints; None when there is no checkpoint there at all."""
  path = os.path.abspath(path)
  for d in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d)):
      steps = complete_steps(d)
      if not steps:
        raise UserError(f"no complete itjax checkpoint in {d!r}")
      return os.path.join(d, str(steps[-1]))
  return path if os.path.isdir(os.path.join(path, "state")) else None


def checkpoint_step_dir(path: str) -> str:
  """The step dir of an itjax checkpoint path (MODEL_DIR, .../checkpoints or a step dir), or a UserError."""
  step_dir = step_dir_of(path)
  if step_dir is None:
    raise UserError(f"no itjax checkpoint at {path!r} (expected MODEL_DIR, MODEL_DIR/checkpoints or a step dir)")
  return step_dir


def restore_params(path: str, abstract_params: Any, fresh: Any | None = None,
                   heads: tuple[str, ...] = ("score", "value")) -> Any:
  """The params of a checkpoint's train state (MODEL_DIR, .../checkpoints or a step dir: the latest complete
  step), restored onto `abstract_params`' shapes, dtypes and shardings.

  A partial restore: whatever optimizer state the checkpoint holds is not read, nor params the target lacks (an
  LM head under a reward model's score head). With `fresh` (initialized params of the target's structure), new
  `heads` (top-level params) the checkpoint lacks take their fresh values, and are logged; any other param the
  checkpoint lacks is an error, as without `fresh`.
  """
  step_dir = checkpoint_step_dir(path)
  state_dir = os.path.join(step_dir, "state")
  target_flat = traverse_util.flatten_dict(abstract_params, sep="/")
  missing: list[str] = []
  if fresh is not None:
    meta = ocp.PyTreeCheckpointer().metadata(state_dir)
    saved = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    saved_keys = set(traverse_util.flatten_dict(dict(saved.get("params", {})), sep="/"))
    missing = sorted(k for k in target_flat if k not in saved_keys and k.split("/")[0] in heads)
  target = {"params": traverse_util.unflatten_dict({k: v for k, v in target_flat.items() if k not in missing},
                                                   sep="/")}
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  out = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
  if not missing:
    return out["params"]
  log.info("initialized fresh (not in %s): %s", step_dir, ", ".join(missing))
  flat = traverse_util.flatten_dict(out["params"], sep="/")
  new = traverse_util.flatten_dict(fresh, sep="/")
  return traverse_util.unflatten_dict({k: flat[k] if k in flat else new[k] for k in target_flat}, sep="/")


def read_metadata(step_dir: str) -> dict:
  """The JSON metadata a step was saved with (data position, seed, PEFT base, ...)."""
  try:
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(step_dir, "meta"))
  except (OSError, ValueError, FileNotFoundError) as e:
    raise UserError(f"{step_dir}: cannot read the checkpoint metadata ({e})") from None
