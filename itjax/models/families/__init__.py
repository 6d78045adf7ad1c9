"""The registry of model families: every module in this package defines `FAMILY = Family(...)`.

Adding a family (say Gemma) is one new module here (config, module, interface, HF mapping) plus a
gin file; nothing else branches on the architecture.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

import flax.linen as nn

from itjax.errors import UserError
from itjax.models.family import Family


@functools.cache
def families() -> dict[str, Family]:
  """name -> Family, for every module of this package."""
  out = {}
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    family = importlib.import_module(f"{__name__}.{info.name}").FAMILY
    out[family.name] = family
  return out


def family_named(name: str) -> Family:
  """The family model_config.json calls `name` (UserError naming the known ones)."""
  known = families()
  if name not in known:
    raise UserError(f"unknown model family {name!r}; expected one of {sorted(known)}")
  return known[name]


def family_of(obj: Any) -> Family:
  """The family of a model config, a Flax module, or an interface over one."""
  obj = getattr(obj, "model", obj)  # an interface wraps its module
  for family in families().values():
    if isinstance(obj, family.config_cls) or isinstance(obj, family.module_cls):
      return family
  raise TypeError(f"not an itjax model config or module: {type(obj).__name__}")


def family_for_hf(model_type: str, where: str) -> Family:
  """The family that reads HF `model_type` (UserError naming `where` and the supported types)."""
  for family in families().values():
    if model_type in family.hf.model_types:
      return family
  supported = sorted(t for f in families().values() for t in f.hf.model_types)
  raise UserError(f"{where}: unsupported model_type {model_type!r}; supported: {', '.join(supported)}")


def build_model(cfg: Any) -> nn.Module:
  """The Flax module of a model config."""
  return family_of(cfg).build(cfg)


def interface_for(obj: Any) -> Any:
  """The model interface of a config, module or interface."""
  if hasattr(obj, "features") and hasattr(obj, "model"):
    return obj
  return family_of(obj).interface(obj)


def example_inputs(cfg: Any) -> tuple:
  """Small dummy token arrays that the config's module `init` accepts."""
  return family_of(cfg).example_inputs()
