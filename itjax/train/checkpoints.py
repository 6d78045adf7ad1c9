"""Orbax checkpoints in MODEL_DIR/checkpoints/<step>/: state, RNG and data position.

Saves are asynchronous; Orbax commits a step atomically (temporary directory,
then rename), so a save killed midway is never seen as a checkpoint and the
latest complete one is restored instead.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from itjax.errors import UserError
from itjax.models.config_io import load_model_config
from itjax.models.decoder import Decoder


@gin.configurable
class Checkpointer:
  """Wraps `ocp.CheckpointManager` with itjax's items: state, and JSON metadata."""

  def __init__(self, model_dir: str, period: int = 1000, keep: int | None = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
    self.period = period
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(save_interval_steps=period, max_to_keep=keep,
                                             enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    """Saves every `period` steps (Orbax alone would also save the first step it sees), or when forced."""
    if not force and step % self.period:
      return False
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def restore_params(path: str, abstract_params: Any) -> Any:
  """Params from an itjax checkpoint directory (MODEL_DIR, .../checkpoints or a step dir)."""
  path = os.path.abspath(path)
  candidates = [path, os.path.join(path, "checkpoints")]
  for d in candidates:
    if os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d)):
      step = ocp.CheckpointManager(d, item_names=("state", "meta")).latest_step()
      path = os.path.join(d, str(step))
      break
  state_dir = os.path.join(path, "state")
  if not os.path.isdir(state_dir):
    raise UserError(f"no itjax checkpoint at {path!r} (expected MODEL_DIR, MODEL_DIR/checkpoints or a step dir)")
  # Partial restore: params only, whatever optimizer state the checkpoint holds.
  target = {"params": abstract_params}
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  out = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
  return out["params"]


def load_model(path: str, mesh, rules) -> tuple[Decoder, Any]:
  """(model, params) from an itjax MODEL_DIR or checkpoint, params sharded on `mesh`."""
  cfg = load_model_config(path)
  model = Decoder(cfg)
  example = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda r: model.init(r, example)["params"], jax.random.key(0))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                    nn.unbox(boxed), shardings)
  return model, restore_params(path, abstract)
