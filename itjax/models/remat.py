"""Rematerialization policies by name, for the `remat_policy` field of both families' configs (so gin sets them).

A policy says which activations of a layer the backward pass keeps (in device memory or, `offload_*`, in
pinned host memory, where JAX supports memory kinds: TPU and GPU) and which it recomputes. The layers name
their key activations with `checkpoint_name` (`tag`), so policies can pick them as MaxText's do:

  none                     no remat: keep everything (fastest, most memory)
  full                     keep only each layer's input; recompute the rest
  dots                     keep every matmul output
  dots_with_no_batch_dims  keep the weight matmuls (projections), recompute attention scores and elementwise
  save_qkv                 keep the q/k/v projections only
  save_qkv_attention       keep q/k/v and the attention output: the backward never reruns attention's forward
  offload_qkv_attention    as save_qkv_attention, but those activations go to host memory
  offload_dots             the weight matmuls, offloaded to host memory
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name

from itjax.errors import UserError

QKV = ("query_proj", "key_proj", "value_proj")
ATTENTION_OUT = "attention_out"
MLP_HIDDEN = "mlp_hidden"


def tag(x: jax.Array, name: str) -> jax.Array:
  """Names an activation so a policy can save or offload it (identity otherwise)."""
  return checkpoint_name(x, name)


def _policies() -> dict[str, Any]:
  cp = jax.checkpoint_policies
  offload = {"offload_src": "device", "offload_dst": "pinned_host"}
  return {
      "full": None,
      "dots": cp.checkpoint_dots,
      "dots_with_no_batch_dims": cp.dots_with_no_batch_dims_saveable,
      "save_qkv": cp.save_only_these_names(*QKV),
      "save_qkv_attention": cp.save_only_these_names(*QKV, ATTENTION_OUT),
      "offload_qkv_attention": cp.save_and_offload_only_these_names(
          names_which_can_be_saved=[], names_which_can_be_offloaded=[*QKV, ATTENTION_OUT], **offload),
      "offload_dots": cp.offload_dot_with_no_batch_dims(**offload),
  }


NAMES = ("none", *_policies())


def check_policy(owner: str, name: str) -> None:
  if name not in NAMES:
    raise UserError(f"{owner}.remat_policy={name!r}: expected one of {', '.join(NAMES)}")


def wrap(layer_cls: type[nn.Module], name: str, static_argnums: tuple[int, ...], scanned: bool) -> type[nn.Module]:
  """`layer_cls` under the named policy (unchanged for "none"). Inside a scan, CSE across iterations cannot
  undo the remat, so `prevent_cse` (which costs fusion) is off there, as flax advises."""
  if name == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=_policies()[name], static_argnums=static_argnums, prevent_cse=not scanned)
