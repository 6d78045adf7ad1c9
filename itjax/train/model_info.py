"""MODEL_DIR/model-info.txt: every parameter's shape, logical axes and sharding (as T5X writes)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from itjax.train.state import state_specs


def _rows(tree, specs, shardings, prefix: str):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  spec_leaves = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  shard_leaves = jax.tree_util.tree_leaves(shardings)
  for (path, leaf), spec, sh in zip(flat, spec_leaves, shard_leaves, strict=True):
    name = prefix + "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)
    yield name, leaf, tuple(spec), sh.spec


def write_model_info(path: str, state, shardings, model: nn.Module, optimizer, example) -> None:
  specs = state_specs(model, optimizer, example)
  lines, total = [], 0
  for group in ("params", "opt_state"):
    for name, leaf, logical, mesh_spec in _rows(getattr(state, group), getattr(specs, group),
                                                getattr(shardings, group), f"{group}/"):
      n = int(np.prod(leaf.shape))
      total += n if group == "params" else 0
      lines.append(f"{name:<70} {str(tuple(leaf.shape)):<18} {str(leaf.dtype):<9} logical={logical} "
                   f"mesh={tuple(mesh_spec)}")
  header = f"# total parameters: {total:,}\n# name  shape  dtype  logical axes  mesh axes\n"
  with open(path, "w") as f:
    f.write(header + "\n".join(lines) + "\n")
