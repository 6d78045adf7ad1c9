"""Abstract sharded trees: shapes and shardings of params and states, computed without allocating.

Orbax restores into trees of `jax.ShapeDtypeStruct`s that carry target shardings, `jax.jit` creates
state directly sharded from `out_shardings`, and `itjax compile` lowers against such trees: all of
them start from the boxed (logically annotated) abstract params that `jax.eval_shape` gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh

from itjax.core.mesh import Rules, tree_shardings
from itjax.models.families import family_of

# Shapes never depend on the key: an abstract one, so that importing this module starts no JAX backend
# (jax.distributed.initialize must come first on multi-host runs).
KEY = jax.eval_shape(lambda: jax.random.key(0))


def sharded(shapes: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `shapes` carrying the matching leaf of `shardings`."""
  return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def abstract_boxed(fn: Callable[[jax.Array], Any]) -> Any:
  """The boxed abstract output of `fn(rng)` (logical axes kept)."""
  return jax.eval_shape(fn, KEY)


def specs_and_shapes(fn: Callable[[jax.Array], Any]) -> tuple[Any, Any]:
  """(logical PartitionSpecs, unboxed ShapeDtypeStructs) of what `fn(rng)` builds."""
  boxed = abstract_boxed(fn)
  return nn.get_partition_spec(boxed), nn.unbox(boxed)


def abstract_sharded(fn: Callable[[jax.Array], Any], mesh: Mesh, rules: Rules) -> tuple[Any, Any]:
  """(ShapeDtypeStructs with shardings, the shardings) of what `fn(rng)` builds, sharded by `rules`."""
  specs, shapes = specs_and_shapes(fn)
  shardings = tree_shardings(specs, mesh, rules)
  return sharded(shapes, shardings), shardings


def init_sharded(fn: Callable[[jax.Array], Any], shardings: Any, mesh: Mesh, rules: Rules, rng: jax.Array) -> Any:
  """`fn(rng)` unboxed, computed by one jit straight into `shardings` (never whole on one device)."""
  init = jax.jit(lambda r: nn.unbox(fn(r)), out_shardings=shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return init(rng)


def param_fn(cfg: Any) -> Callable[[jax.Array], Any]:
  """rng -> the boxed params of a model config (its family's init)."""
  family = family_of(cfg)
  return lambda rng: family.init(cfg, rng)
