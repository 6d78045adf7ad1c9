"""Device mesh and logical-axis rules: how model axis names map onto devices.

Models name their axes (`embed`, `mlp`, `heads`, ...); these rules, plain data
configurable in gin, decide which mesh axis shards each. Flax assigns a mesh
axis at most once per array, so activations [batch, length, embed] take
(data, fsdp) for batch and leave embed replicated, while parameters shard
embed over fsdp (ZeRO-3 style).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from itjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("relpos_buckets", None),
)


@gin.configurable
def create_mesh(mesh_shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one -1 entry takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise UserError(f"create_mesh.mesh_shape={tuple(mesh_shape)}: need {len(MESH_AXES)} entries for {MESH_AXES}")
  if shape.count(-1) > 1:
    raise UserError(f"create_mesh.mesh_shape={tuple(mesh_shape)}: at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise UserError(f"create_mesh.mesh_shape={tuple(mesh_shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise UserError(f"create_mesh.mesh_shape={tuple(mesh_shape)} needs {math.prod(shape)} devices; "
                    f"{len(devices)} available")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


@gin.configurable
def logical_axis_rules(rules: Rules = DEFAULT_RULES) -> Rules:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def tree_shardings(logical_specs, mesh: Mesh, rules: Rules):
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Batch arrays [batch, length] shard their first axis like the `batch` rule."""
  spec = nn.logical_to_mesh_axes(("batch", "length"), rules)
  return NamedSharding(mesh, PartitionSpec(*spec))
