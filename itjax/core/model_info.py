"""MODEL_DIR/model-info.txt: every array's shape, dtype, logical axes and sharding (as T5X writes it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class InfoGroup:
  """One tree of model-info.txt (params, opt_state, frozen_base) with its logical specs and shardings."""

  name: str
  tree: Any
  specs: Any
  shardings: Any


def _rows(group: InfoGroup):
  flat = jax.tree_util.tree_flatten_with_path(group.tree)[0]
  spec_leaves = jax.tree_util.tree_leaves(group.specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  for (path, leaf), spec, sh in zip(flat, spec_leaves, jax.tree_util.tree_leaves(group.shardings), strict=True):
    name = group.name + "/" + "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)
    yield name, leaf, tuple(spec), sh.spec


def write_model_info(path: str, groups: Sequence[InfoGroup], header: Callable[[dict[str, int]], str]) -> None:
  """Writes one line per array; `header(counts)` (scalars per group) makes the first line."""
  lines, counts = [], {}
  for group in groups:
    for name, leaf, logical, mesh_spec in _rows(group):
      counts[group.name] = counts.get(group.name, 0) + int(np.prod(leaf.shape))
      lines.append(f"{name:<70} {str(tuple(leaf.shape)):<18} {str(leaf.dtype):<9} logical={logical} "
                   f"mesh={tuple(mesh_spec)}")
  with open(path, "w") as f:
    f.write(header(counts) + "\n# name  shape  dtype  logical axes  mesh axes\n" + "\n".join(lines) + "\n")
