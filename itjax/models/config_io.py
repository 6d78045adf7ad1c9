"""MODEL_DIR/model_config.json: the architecture beside its checkpoints.

Written by `itjax train` and `itjax convert`, read by eval, infer and export,
so that a checkpoint directory is self-describing. The file names the
architecture ("decoder": `DecoderConfig`, "t5": `T5Config`) and its fields.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from itjax.errors import UserError
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.t5 import T5, T5Config

FILENAME = "model_config.json"
ModelConfig = DecoderConfig | T5Config
# architecture name in model_config.json -> (config class, model class)
ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {"decoder": (DecoderConfig, Decoder), "t5": (T5Config, T5)}


def architecture_of(cfg: ModelConfig) -> str:
  """"decoder" or "t5": the name model_config.json stores for this config type."""
  for name, (cfg_cls, _) in ARCHITECTURES.items():
    if isinstance(cfg, cfg_cls):
      return name
  raise TypeError(f"not an itjax model config: {type(cfg).__name__}")


def build_model(cfg: ModelConfig) -> nn.Module:
  """The Flax module for a config: Decoder(DecoderConfig) or T5(T5Config)."""
  return ARCHITECTURES[architecture_of(cfg)][1](cfg)


def example_inputs(cfg: ModelConfig) -> tuple[jax.Array, ...]:
  """Small dummy token arrays that `build_model(cfg).init` accepts (for shapes and abstract params)."""
  if isinstance(cfg, T5Config):
    return jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 8), jnp.int32)
  return (jnp.zeros((1, 8), jnp.int32),)


def save_model_config(model_dir: str, cfg: ModelConfig) -> None:
  d = dataclasses.asdict(cfg)
  if isinstance(cfg, DecoderConfig):
    d["rope_scaling"] = dict(cfg.rope_scaling) if cfg.rope_scaling else None
  with open(os.path.join(model_dir, FILENAME), "w") as f:
    json.dump({"architecture": architecture_of(cfg), "config": d}, f, indent=1)


def find_model_dir(path: str) -> str:
  """The nearest folder at or above `path` (a step dir, checkpoints/, MODEL_DIR) with model_config.json."""
  p = os.path.abspath(path)
  for _ in range(4):
    if os.path.exists(os.path.join(p, FILENAME)):
      return p
    p = os.path.dirname(p)
  raise UserError(f"no {FILENAME} at or above {path!r}: is it an itjax MODEL_DIR or checkpoint?")


def load_model_config(path: str) -> ModelConfig:
  """The config stored at or above `path`: a DecoderConfig or a T5Config, as the file says."""
  with open(os.path.join(find_model_dir(path), FILENAME)) as f:
    blob = json.load(f)
  arch = blob.get("architecture")
  if arch not in ARCHITECTURES:
    raise UserError(f"{path}/{FILENAME}: unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
  cfg_cls = ARCHITECTURES[arch][0]
  fields = {f.name for f in dataclasses.fields(cfg_cls)}
  unknown = set(blob["config"]) - fields
  if unknown:
    raise UserError(f"{path}/{FILENAME}: unknown {arch} config fields {sorted(unknown)}")
  try:
    return cfg_cls(**blob["config"])
  except (TypeError, ValueError) as e:
    raise UserError(f"{path}/{FILENAME}: bad {arch} config ({e})") from None


def load_decoder_config(path: str) -> DecoderConfig:
  """Like `load_model_config`, for callers that only handle decoder-only models (UserError otherwise)."""
  cfg = load_model_config(path)
  if not isinstance(cfg, DecoderConfig):
    raise UserError(f"{path}: a {architecture_of(cfg)} model; this command supports decoder-only models only")
  return cfg
