"""MODEL_DIR/model_config.json: the architecture beside its checkpoints.

Written by `itjax train` and `itjax convert`, read by eval, infer and export,
so that a checkpoint directory is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
import os

from itjax.errors import UserError
from itjax.models.decoder import DecoderConfig

FILENAME = "model_config.json"


def save_model_config(model_dir: str, cfg: DecoderConfig) -> None:
  d = dataclasses.asdict(cfg)
  d["rope_scaling"] = dict(cfg.rope_scaling) if cfg.rope_scaling else None
  with open(os.path.join(model_dir, FILENAME), "w") as f:
    json.dump({"architecture": "decoder", "config": d}, f, indent=1)


def find_model_dir(path: str) -> str:
  """The nearest folder at or above `path` (a step dir, checkpoints/, MODEL_DIR) with model_config.json."""
  p = os.path.abspath(path)
  for _ in range(4):
    if os.path.exists(os.path.join(p, FILENAME)):
      return p
    p = os.path.dirname(p)
  raise UserError(f"no {FILENAME} at or above {path!r}: is it an itjax MODEL_DIR or checkpoint?")


def load_model_config(path: str) -> DecoderConfig:
  with open(os.path.join(find_model_dir(path), FILENAME)) as f:
    blob = json.load(f)
  if blob.get("architecture") != "decoder":
    raise UserError(f"{path}/{FILENAME}: unknown architecture {blob.get('architecture')!r}")
  fields = {f.name for f in dataclasses.fields(DecoderConfig)}
  unknown = set(blob["config"]) - fields
  if unknown:
    raise UserError(f"{path}/{FILENAME}: unknown config fields {sorted(unknown)}")
  return DecoderConfig(**blob["config"])
