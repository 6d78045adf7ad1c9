"""Orbax checkpoints in MODEL_DIR/checkpoints/<step>/: state, RNG and data position.

Saves are asynchronous. A step counts only once complete: Orbax writes it to
`<step>.orbax-checkpoint-tmp` and renames it when done (on object stores it
writes `commit_success.txt` last instead). itjax requires that marker on every
filesystem too, so neither a save killed midway nor a half-copied step dir is
ever restored: the latest complete one is. When a `Checkpointer` opens the
directory, leftover temporary dirs are removed and incomplete step dirs moved
aside to `<step>.incomplete`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import gin
import jax
import orbax.checkpoint as ocp

from itjax.errors import UserError
from itjax.models.config_io import build_model, example_inputs, load_model_config

log = logging.getLogger("itjax")

ITEMS = ("state", "meta")
COMMIT_MARKER = "commit_success.txt"  # orbax's atomicity_types.COMMIT_SUCCESS_FILE
TMP_SUFFIX = ".orbax-checkpoint-tmp"


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


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def clean_incomplete(directory: str) -> list[str]:
  """Process 0 removes leftover temporary dirs and moves incomplete step dirs aside; returns what it moved."""
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
  _sync("itjax_checkpoints_cleaned")
  return moved


def metric_value(metrics: Mapping[str, Any] | None, name: str) -> float:
  """`name`'s value in a checkpoint's metrics; NaN when missing (sorted as worst)."""
  v = (metrics or {}).get(name)
  return float(v) if v is not None else math.nan


@gin.configurable
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
    clean_incomplete(self.directory)
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

  def save(self, step: int, state: Any, meta: dict, force: bool = False,
           metrics: Mapping[str, float] | None = None) -> bool:
    """Saves every `period` steps (Orbax alone would also save the first step it sees), or when forced."""
    if not force and step % self.period:
      return False
    if step in self.manager.all_steps():  # already saved (e.g. the final save of a resumed, finished run)
      return False
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           meta=ocp.args.JsonSave(meta)),
                             metrics=dict(metrics) if metrics and self.best_metric else None, force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """State (resharded onto `abstract_state`'s shardings) and metadata of a complete step."""
    if not is_complete(os.path.join(self.directory, str(step))):
      raise UserError(f"checkpoint step {step} in {self.directory} is missing or incomplete")
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             meta=ocp.args.JsonRestore()))
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


def resolve_step_dir(path: str) -> str:
  """The step dir that `path` (MODEL_DIR, .../checkpoints or a step dir) means: the latest complete one."""
  path = os.path.abspath(path)
  for d in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d)):
      steps = complete_steps(d)
      if not steps:
        raise UserError(f"no complete itjax checkpoint in {d!r}")
      path = os.path.join(d, str(steps[-1]))
      break
  return path


def restore_params(path: str, abstract_params: Any) -> Any:
  """Params from an itjax checkpoint directory (MODEL_DIR, .../checkpoints or a step dir)."""
  path = resolve_step_dir(path)
  state_dir = os.path.join(path, "state")
  if not os.path.isdir(state_dir):
    raise UserError(f"no itjax checkpoint at {path!r} (expected MODEL_DIR, MODEL_DIR/checkpoints or a step dir)")
  # Partial restore: params only, whatever optimizer state the checkpoint holds.
  target = {"params": abstract_params}
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  out = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
  return out["params"]


def load_model(path: str, mesh, rules) -> tuple[nn.Module, Any]:
  """(model, params) from an itjax MODEL_DIR or checkpoint (either architecture), params sharded on `mesh`."""
  cfg = load_model_config(path)
  model = build_model(cfg)
  if cfg.peft is not None:  # a PEFT run: its trainable variables on top of the base its checkpoint names
    from itjax.peft.state import load_peft_params

    return model, load_peft_params(path, cfg, mesh, rules)
  boxed = jax.eval_shape(lambda r: model.init(r, *example_inputs(cfg))["params"], jax.random.key(0))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                    nn.unbox(boxed), shardings)
  return model, restore_params(path, abstract)
