"""Train state and checkpoints under PEFT: trainable-only state, a frozen sharded base, and its reference.

The train state (`TrainState(step, params, opt_state)`) holds the PEFT variables alone, so the
optimizer keeps state for them only and checkpoints store them only. The frozen base is a separate
tree, sharded by the same logical-axis rules as in full fine-tuning and stored in
`PeftConfig.base_dtype`; each checkpoint's metadata names where it comes from (`BASE_META`: the
initial checkpoint's absolute path, or the seed of a from-scratch base), so resuming, evaluating and
exporting reload it from there.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from itjax.errors import UserError
from itjax.models.config_io import ModelConfig, build_model, example_inputs
from itjax.models.layers import resolve_dtype
from itjax.peft.method import Params, combine, split, with_peft
from itjax.train.partitioning import Rules, tree_shardings
from itjax.train.state import TrainState

log = logging.getLogger("itjax")
BASE_META = "peft_base"  # checkpoint metadata key: {"checkpoint": abs path | None, "seed": int}


def _boxed_params(cfg: ModelConfig, rng) -> Any:
  return build_model(cfg).init(rng, *example_inputs(cfg))["params"]


def _boxed_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, rng) -> TrainState:
  # Optimizer state built from the *boxed* trainable params inherits their logical axes.
  trainable = split(_boxed_params(cfg, rng))[1]
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=optimizer.init(trainable))


def state_specs(cfg: ModelConfig, optimizer: optax.GradientTransformation) -> TrainState:
  """Logical PartitionSpecs of the trainable-only train state of a PEFT model config."""
  return nn.get_partition_spec(jax.eval_shape(lambda r: _boxed_state(cfg, optimizer, r), jax.random.key(0)))


def create_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh, rules: Rules,
                 rng: jax.Array) -> tuple[TrainState, TrainState]:
  """(state, shardings) of the trainable PEFT variables and their optimizer state, created sharded."""
  shardings = tree_shardings(state_specs(cfg, optimizer), mesh, rules)
  init = jax.jit(lambda r: nn.unbox(_boxed_state(cfg, optimizer, r)), out_shardings=shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return init(rng), shardings


def abstract_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with target shardings of the trainable-only state: what Orbax restores into."""
  shapes = jax.eval_shape(lambda r: nn.unbox(_boxed_state(cfg, optimizer, r)), jax.random.key(0))
  return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def base_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules) -> Any:
  """Shardings of the frozen base: the plain model's, as in full fine-tuning."""
  boxed = jax.eval_shape(lambda r: _boxed_params(with_peft(cfg, None), r), jax.random.key(0))
  return tree_shardings(nn.get_partition_spec(boxed), mesh, rules)


def base_reference(initial_checkpoint_path: str | None, seed: int) -> dict:
  """What a PEFT checkpoint records about its base: the checkpoint it was read from, else the init seed."""
  return {"checkpoint": os.path.abspath(initial_checkpoint_path) if initial_checkpoint_path else None, "seed": seed}


def load_base(cfg: ModelConfig, reference: dict, mesh: Mesh, rules: Rules) -> Params:
  """The frozen base named by `reference`, sharded on `mesh`, floating leaves in `cfg.peft.base_dtype`."""
  from itjax.train.checkpoints import restore_params

  base_cfg = with_peft(cfg, None)
  dtype = resolve_dtype(cfg.peft.base_dtype)
  shardings = base_shardings(cfg, mesh, rules)
  cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  if reference.get("checkpoint"):
    # Restored straight into the storage dtype (Orbax casts), so a bf16 base never exists in fp32 whole.
    shapes = jax.eval_shape(lambda r: jax.tree_util.tree_map(cast, nn.unbox(_boxed_params(base_cfg, r))),
                            jax.random.key(0))
    abstract = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                                      shardings)
    base = restore_params(reference["checkpoint"], abstract)
    return jax.jit(lambda t: jax.tree_util.tree_map(cast, t), out_shardings=shardings, donate_argnums=0)(base)
  init = lambda r: jax.tree_util.tree_map(cast, nn.unbox(_boxed_params(base_cfg, r)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jax.jit(init, out_shardings=shardings)(jax.random.key(reference["seed"]))


def initial_params(cfg: ModelConfig, base: Params, state_shardings: TrainState, rng: jax.Array) -> Params:
  """The base with freshly initialized PEFT variables: the untrained baseline of a PEFT run."""
  init = jax.jit(lambda r: split(nn.unbox(_boxed_params(cfg, r)))[1], out_shardings=state_shardings.params)
  return combine(base, init(rng))


def read_base_reference(step_dir: str) -> dict:
  """The base reference in a PEFT checkpoint's metadata (UserError if the checkpoint has none)."""
  path = os.path.join(step_dir, "meta", "metadata")
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{step_dir}: cannot read the checkpoint metadata ({e})") from None
  if BASE_META not in meta:
    raise UserError(f"{step_dir}: model_config.json has a peft method but the checkpoint names no base "
                    f"(no {BASE_META!r} in its metadata); was it written by a PEFT run of itjax train?")
  return meta[BASE_META]


def load_peft_params(path: str, cfg: ModelConfig, mesh: Mesh, rules: Rules) -> Params:
  """Full params of a PEFT checkpoint (MODEL_DIR, .../checkpoints or a step dir): its trainable variables
  on top of the base its metadata names, sharded on `mesh`."""
  from itjax.train.checkpoints import resolve_step_dir

  step_dir = resolve_step_dir(path)
  base = load_base(cfg, read_base_reference(step_dir), mesh, rules)
  return combine(base, load_trainable(step_dir, cfg, mesh, rules))


def load_trainable(path: str, cfg: ModelConfig, mesh: Mesh, rules: Rules) -> Params:
  """The trainable PEFT variables of a PEFT checkpoint (MODEL_DIR, .../checkpoints or a step dir), sharded."""
  from itjax.train.checkpoints import restore_params

  boxed = jax.eval_shape(lambda r: split(_boxed_params(cfg, r))[1], jax.random.key(0))
  shardings = tree_shardings(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                    nn.unbox(boxed), shardings)
  return restore_params(path, abstract)


def write_model_info(path: str, cfg: ModelConfig, optimizer: optax.GradientTransformation, state: TrainState,
                     shardings: TrainState, base: Params, base_shardings_: Any) -> None:
  """MODEL_DIR/model-info.txt of a PEFT run: trainable params, their optimizer state and the frozen base."""
  specs = state_specs(cfg, optimizer)
  base_specs = nn.get_partition_spec(jax.eval_shape(lambda r: _boxed_params(with_peft(cfg, None), r),
                                                    jax.random.key(0)))
  lines, counts = [], {}
  for group, tree, spec_tree, shard_tree in (("params", state.params, specs.params, shardings.params),
                                             ("opt_state", state.opt_state, specs.opt_state, shardings.opt_state),
                                             ("frozen_base", base, base_specs, base_shardings_)):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    spec_leaves = jax.tree_util.tree_leaves(spec_tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for (key, leaf), spec, sh in zip(flat, spec_leaves, jax.tree_util.tree_leaves(shard_tree), strict=True):
      name = group + "/" + "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in key)
      counts[group] = counts.get(group, 0) + int(np.prod(leaf.shape))
      lines.append(f"{name:<70} {str(tuple(leaf.shape)):<18} {str(leaf.dtype):<9} logical={tuple(spec)} "
                   f"mesh={tuple(sh.spec)}")
  header = (f"# PEFT ({'+'.join(cfg.peft.methods)}): trainable parameters: {counts.get('params', 0):,}; "
            f"frozen base parameters: {counts.get('frozen_base', 0):,} ({cfg.peft.base_dtype})\n"
            "# name  shape  dtype  logical axes  mesh axes\n")
  with open(path, "w") as f:
    f.write(header + "\n".join(lines) + "\n")
