"""Bottleneck adapters (Houlsby et al., 2019) after every attention and MLP block.

Each block output y becomes `y + up(act(down(y)))` before the residual add, with `down` [embed,
bottleneck_dim] and `up` [bottleneck_dim, embed] plus biases; `up` starts at zero, so a fresh
adapter leaves the model's outputs exactly unchanged. The nonlinearity means adapters do not merge
into the base weights.
"""

from __future__ import annotations

import gin

from itjax.errors import UserError
from itjax.models.peft_hooks import ADAPTER_ACTIVATIONS, PeftConfig
from itjax.peft.method import check_base_dtype


@gin.configurable
def adapters(bottleneck_dim: int = 64, activation: str = "relu", base_dtype: str = "float32") -> PeftConfig:
  """Adapters of width `bottleneck_dim` with `activation` (relu | gelu | silu)."""
  if not isinstance(bottleneck_dim, int) or bottleneck_dim <= 0:
    raise UserError(f"adapters.bottleneck_dim={bottleneck_dim!r} must be a positive integer")
  if activation not in ADAPTER_ACTIVATIONS:
    raise UserError(f"adapters.activation={activation!r}: expected one of {', '.join(sorted(ADAPTER_ACTIVATIONS))}")
  check_base_dtype("adapters.base_dtype", base_dtype)
  return PeftConfig(adapter_dim=bottleneck_dim, adapter_activation=activation, base_dtype=base_dtype)
