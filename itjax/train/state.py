"""Train state created directly sharded: never materialized whole on one device."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from itjax.train.partitioning import Rules, tree_shardings


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _init_args(example) -> tuple:
  """`model.init`'s positional inputs: a tuple of dummy arrays, or one array (decoder tokens)."""
  return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def _boxed_state(model: nn.Module, optimizer: optax.GradientTransformation, rng, example) -> TrainState:
  # Optimizer state built from the *boxed* params inherits their logical axes.
  params = model.init(rng, *_init_args(example))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def state_specs(model: nn.Module, optimizer: optax.GradientTransformation, example) -> TrainState:
  """Logical PartitionSpecs of every leaf of the train state (no allocation)."""
  abstract = jax.eval_shape(lambda r: _boxed_state(model, optimizer, r, example), jax.random.key(0))
  return nn.get_partition_spec(abstract)


def abstract_state(model, optimizer, example, shardings) -> TrainState:
  """ShapeDtypeStructs carrying target shardings: what Orbax restores into."""
  shapes = jax.eval_shape(lambda r: nn.unbox(_boxed_state(model, optimizer, r, example)), jax.random.key(0))
  return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh, rules: Rules,
                       rng: jax.Array, example) -> tuple[TrainState, TrainState]:
  """(state, shardings): params and optimizer state initialized in place on the mesh."""
  shardings = tree_shardings(state_specs(model, optimizer, example), mesh, rules)
  init = jax.jit(lambda r: nn.unbox(_boxed_state(model, optimizer, r, example)), out_shardings=shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return init(rng), shardings


def init_params(model: nn.Module, rng: jax.Array, example, shardings) -> Any:
  """Freshly initialized params (the untrained baseline), created sharded."""
  return jax.jit(lambda r: nn.unbox(model.init(r, *_init_args(example))["params"]), out_shardings=shardings)(rng)
