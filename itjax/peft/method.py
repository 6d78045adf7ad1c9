"""What every PEFT method shares: validating a method against a model, and its params' shapes.

A PEFT model is the plain model whose config carries a `PeftConfig` (`with_peft`); its params are the
base weights plus PEFT variables that `itjax.models.peft_hooks.is_peft_leaf` recognizes (`split`,
`combine` live there, next to the hooks). Training differentiates only the trainable tree
(`itjax.core.trainable.ParameterEfficient`), so gradients, optimizer state and checkpoints cover the
trainable variables alone.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax

from itjax.core import trees
from itjax.core.trainable import trainable_for
from itjax.errors import UserError
from itjax.models import quant
from itjax.models.layers import resolve_dtype
from itjax.models.peft_hooks import Params, PeftConfig, flatten, is_peft_leaf, unflatten, with_peft


def trainable_mask(params: Any) -> Params:
  """A tree of bools like `params`: True on PEFT variables (e.g. for optax.masked)."""
  return unflatten({k: is_peft_leaf(k) for k in flatten(params)})


def check_base_dtype(name: str, dtype: str) -> None:
  """UserError naming the gin parameter `name` unless `dtype` is a known dtype name."""
  try:
    resolve_dtype(dtype)
  except ValueError as e:
    raise UserError(f"{name}: {e}") from None


def check_quantization(fmt: str | None, block_size: int) -> None:
  """UserError naming `lora.quantize_base` / `lora.quant_block_size` unless they name a known quantization."""
  if fmt is not None and fmt not in quant.FORMATS:
    raise UserError(f"lora.quantize_base={fmt!r}: expected one of {', '.join(quant.FORMATS)} (or None: a float base)")
  if not isinstance(block_size, int) or block_size < 4 or block_size % 2:
    raise UserError(f"lora.quant_block_size={block_size!r} must be an even integer >= 4 (bitsandbytes: 64)")


def check_quantized_shapes(cfg: Any, peft: PeftConfig) -> None:
  """UserError naming `lora.quant_block_size` when an NF4 block does not divide a kernel's input dim."""
  if peft.base_quant != "nf4":
    return
  flat = flatten(nn.meta.unbox(abstract_params(with_peft(cfg, None))))
  for path, leaf in flat.items():
    axes = quant.input_axes(path, leaf.ndim)
    if axes is not None and leaf.shape[axes[-1]] % peft.quant_block_size:
      raise UserError(f"lora.quant_block_size={peft.quant_block_size} does not divide {path}'s input dim "
                      f"({leaf.shape[axes[-1]]}); NF4 blocks run along it: pick a divisor such as 32 or 16")


def abstract_params(cfg: Any) -> Params:
  """Boxed ShapeDtypeStructs (with logical axes) of a model's params, without allocating."""
  return trees.abstract_boxed(trees.param_fn(cfg))


def lora_kernels(cfg: Any) -> list[str]:
  """Param paths of every kernel LoRA can adapt in this architecture (attention q/k/v/o, MLP wi/wo)."""
  probe = PeftConfig(lora_rank=1, lora_targets=(".*",))
  flat = flatten(nn.meta.unbox(abstract_params(with_peft(cfg, probe))))
  return sorted(k[:-len("_lora_a")] for k in flat if k.endswith("_lora_a"))


def check_peft(cfg: Any, peft: Any) -> None:
  """UserError unless `peft` (gin's train.peft) is a PEFT method whose LoRA targets exist in `cfg`."""
  if not isinstance(peft, PeftConfig):
    raise UserError(f"train.peft={peft!r}: expected @lora(), @prefix_tuning() or @adapters() (with the parentheses)")
  check_targets(cfg, peft)
  check_quantized_shapes(cfg, peft)


def check_targets(cfg: Any, peft: PeftConfig) -> None:
  """UserError naming `lora.target_modules` when a pattern matches no kernel LoRA can adapt."""
  if not peft.lora_rank:
    return
  kernels = lora_kernels(cfg)
  for pattern in peft.lora_targets:
    if not any(re.search(pattern, k) for k in kernels):
      names = sorted({k.rsplit("/", 1)[-1] for k in kernels})
      raise UserError(f"lora.target_modules pattern {pattern!r} matches no kernel LoRA can adapt (regexes on "
                      f"param paths such as {kernels[0]!r}; kernel names: {', '.join(names)})")


def init_trainable(cfg: Any, rng: jax.Array) -> Params:
  """Freshly initialized trainable PEFT variables of `cfg` (its base weights are never materialized)."""
  return jax.jit(lambda r: nn.unbox(trainable_for(cfg).trainable_fn(r)))(rng)
