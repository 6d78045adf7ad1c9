"""A model directory, opened once: the one way every command reads a trained or imported model.

A model dir (MODEL_DIR of a run, or the output of `itjax convert --from_hf`) holds
`model_config.json` (the family and its config fields), the tokenizer files it was trained or
converted with, and Orbax checkpoints under `checkpoints/<step>/`. `ModelDir.open(path)` accepts the
dir itself, its `checkpoints/` folder or one step dir, resolves the latest complete step, and
`load(mesh, rules)` gives the model interface and its params sharded on the mesh, whichever
trainable-state strategy wrote the checkpoint (a PEFT run's trainable variables come back on top
of the base its metadata names).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from jax.sharding import Mesh

from itjax.core.checkpoints import checkpoint_step_dir, read_metadata, step_dir_of
from itjax.core.mesh import Rules
from itjax.core.tokenizer import Tokenizer, model_dir_tokenizer
from itjax.core.trainable import Trainable, trainable_for
from itjax.core.vocabulary import resolve_tokenizer
from itjax.errors import UserError
from itjax.models.families import family_named, family_of
from itjax.models.family import Family

FILENAME = "model_config.json"


def save_model_config(model_dir: str, cfg: Any) -> None:
  """Writes MODEL_DIR/model_config.json: the family's name and the config's fields."""
  family = family_of(cfg)
  with open(os.path.join(model_dir, FILENAME), "w") as f:
    json.dump({"architecture": family.name, "config": family.config_to_json(cfg)}, f, indent=1)


def find_model_dir(path: str) -> str:
  """The nearest folder at or above `path` (a step dir, checkpoints/, MODEL_DIR) with model_config.json."""
  p = os.path.abspath(path)
  for _ in range(4):
    if os.path.exists(os.path.join(p, FILENAME)):
      return p
    p = os.path.dirname(p)
  raise UserError(f"no {FILENAME} at or above {path!r}: is it an itjax MODEL_DIR or checkpoint?")


def load_model_config(path: str) -> Any:
  """The config stored at or above `path`, of the family the file names."""
  file = os.path.join(find_model_dir(path), FILENAME)
  try:
    with open(file) as f:
      blob = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{file}: unreadable ({e})") from None
  if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict):
    raise UserError(f"{file}: expected {{\"architecture\": ..., \"config\": {{...}}}}")
  arch = blob.get("architecture")
  try:
    family = family_named(arch)
  except UserError as e:
    raise UserError(f"{file}: {e}") from None
  fields = {f.name for f in dataclasses.fields(family.config_cls)}
  unknown = set(blob["config"]) - fields
  if unknown:
    raise UserError(f"{file}: unknown {arch} config fields {sorted(unknown)}")
  try:
    return family.config_cls(**blob["config"])
  except (TypeError, ValueError, UserError) as e:
    raise UserError(f"{file}: bad {arch} config ({e})") from None


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model ready to run: its interface (logits, generate, score), params sharded on a mesh, and the tokenizer
  in effect (gin's vocabulary.path, else the model dir's, else bytes)."""

  interface: Any
  params: Any
  tokenizer: Tokenizer
  model_dir: ModelDir


@dataclasses.dataclass(frozen=True)
class ModelDir:
  """A model dir resolved once: its root, config, and the step dir to load (None: no checkpoint yet)."""

  root: str
  config: Any
  step_dir: str | None
  path: str  # as the user gave it, for messages

  @classmethod
  def open(cls, path: str) -> ModelDir:
    """MODEL_DIR, MODEL_DIR/checkpoints or a step dir; UserError when none of these is there."""
    root = find_model_dir(path)
    return cls(root=root, config=load_model_config(root), step_dir=step_dir_of(path), path=path)

  @property
  def family(self) -> Family:
    return family_of(self.config)

  @property
  def tokenizer_file(self) -> str | None:
    """The tokenizer file stored beside the checkpoints (None: the model reads bytes)."""
    return model_dir_tokenizer(self.root)

  def require_step_dir(self) -> str:
    return checkpoint_step_dir(self.path) if self.step_dir is None else self.step_dir

  def metadata(self) -> dict:
    """The JSON metadata the step was saved with."""
    return read_metadata(self.require_step_dir())

  def trainable(self) -> Trainable:
    """The trainable-state strategy the checkpoint was written with."""
    return trainable_for(self.config).from_meta(self.metadata(), self.require_step_dir())

  def load(self, mesh: Mesh, rules: Rules) -> LoadedModel:
    """The interface, the checkpoint's full params sharded on `mesh` by logical `rules`, and the tokenizer."""
    params = self.trainable().load_params(self.require_step_dir(), mesh, rules)
    return LoadedModel(self.family.interface(self.config), params, resolve_tokenizer(self.tokenizer_file), self)
