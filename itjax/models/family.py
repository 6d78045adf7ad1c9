"""What a model family is: its config, Flax module, interface and Hugging Face mapping.

Each family is one module in `itjax.models.families` defining `FAMILY = Family(...)`; everything
that depends on the architecture (building the module, model_config.json, training features,
HF import/export, peft's adapter names) asks the family instead of testing the config's type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class HFMapping:
  """How a family reads and writes Hugging Face directories and names its modules in peft's format."""

  model_types: tuple[str, ...]  # HF `model_type`s it reads and writes; the first is the default export
  read_dir: Callable[[str], tuple[Any, dict]]  # HF dir -> (config, numpy params)
  write_dir: Callable[..., None]  # (config, params, path, model_type=..., dtype=...)
  module_names: Callable[[Any], dict[str, str]]  # unscanned itjax kernel path -> HF module name
  peft_task_type: str  # peft's task_type: CAUSAL_LM, SEQ_2_SEQ_LM
  # peft PREFIX_TUNING export (tensors from unscanned '/'-paths, config fields), where peft's format has one.
  prefix_tensors: Callable[[Any, Mapping[str, Any]], dict] | None = None
  prefix_config: Callable[[Any], dict] | None = None


@dataclasses.dataclass(frozen=True)
class Family:
  """One architecture: `name` is what model_config.json stores."""

  name: str
  config_cls: type
  module_cls: type[nn.Module]
  interface_cls: type
  hf: HFMapping
  init_shapes: tuple[tuple[int, int], ...]  # dummy token arrays `module.init` takes (params do not depend on them)
  config_to_json: Callable[[Any], dict] = dataclasses.asdict

  def build(self, cfg: Any) -> nn.Module:
    """The Flax module for a config of this family."""
    return self.module_cls(cfg)

  def interface(self, cfg_or_module: Any) -> Any:
    """The model interface (logits, generate, score, features) over a config's module."""
    module = cfg_or_module if isinstance(cfg_or_module, nn.Module) else self.build(cfg_or_module)
    return self.interface_cls(module)

  def example_inputs(self) -> tuple[jax.Array, ...]:
    """Small dummy token arrays that `module.init` accepts (for shapes and abstract params)."""
    return tuple(jnp.zeros(shape, jnp.int32) for shape in self.init_shapes)

  def init(self, cfg: Any, rng: jax.Array) -> Any:
    """Freshly initialized params of `cfg`, boxed with their logical axes (jit or eval_shape it)."""
    return self.build(cfg).init(rng, *self.example_inputs())["params"]
