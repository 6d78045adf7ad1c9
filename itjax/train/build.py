"""Everything a training run computes with, built once from its settings: `itjax train` and `itjax compile`
share it, so the step `compile` measures is the step `train` runs.

`build(settings)` gives the model interface, the trainable-state strategy, the optimizer and schedule,
the mesh and logical-axis rules, the shardings of the state, the batch and the frozen trees, and the
jitted step. Nothing is allocated: the trainer creates or restores state into these shardings,
`itjax compile` lowers the step against abstract arrays of them. Imports neither TensorFlow nor seqio.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from itjax.core import mesh as mesh_lib
from itjax.core import trees
from itjax.core.checkpoints import restore_params
from itjax.core.trainable import Trainable, TrainState, trainable_for
from itjax.errors import UserError
from itjax.models.families import family_of
from itjax.models.family import Family
from itjax.train.optim import make_optimizer
from itjax.train.settings import TrainSettings
from itjax.train.step import jit_train_step


@dataclasses.dataclass(frozen=True)
class Built:
  """A run's model, strategy, optimizer, mesh, shardings and jitted step (nothing allocated)."""

  settings: TrainSettings
  family: Family
  interface: Any
  trainable: Trainable
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  rules: mesh_lib.Rules
  state_shardings: TrainState
  abstract_state: TrainState
  batch_sharding: NamedSharding
  step_fn: Any

  @property
  def config(self) -> Any:
    return self.settings.model_config

  def frozen_abstract(self) -> dict[str, Any]:
    """ShapeDtypeStructs (with shardings) of the frozen trees the step reads."""
    base = self.trainable.abstract_frozen(self.mesh, self.rules)
    out = {} if base is None else {"base": base}
    if self._needs_reference(base):
      out["reference"] = self.trainable.abstract_trainable(self.mesh, self.rules)
    for name, (cfg, _) in self._frozen_models().items():
      out[name] = trees.abstract_sharded(trees.param_fn(cfg), self.mesh, self.rules)[0]
    return out

  def _frozen_models(self) -> dict[str, tuple[Any, str]]:
    """Other models an objective reads, frozen (a reward model): {name: (config, checkpoint)}."""
    models = getattr(self.settings.objective, "frozen_models", None)
    return models() if models is not None else {}

  def load_frozen(self) -> dict[str, Any]:
    """The frozen trees the step reads, sharded on the mesh."""
    base = self.trainable.load_frozen(self.mesh, self.rules)
    out = {} if base is None else {"base": base}
    if self._needs_reference(base):
      # Always the initial checkpoint, also when resuming: the reference policy never moves.
      out["reference"] = restore_params(self._reference_checkpoint(),
                                        self.trainable.abstract_trainable(self.mesh, self.rules))
    for name, (cfg, checkpoint) in self._frozen_models().items():
      out[name] = restore_params(checkpoint, trees.abstract_sharded(trees.param_fn(cfg), self.mesh, self.rules)[0])
    return out

  def _needs_reference(self, base: Any) -> bool:
    """An objective that reads a reference policy, in a run whose frozen base cannot serve as one (PEFT's base,
    applied without the adapters, is the reference: no second copy)."""
    return "reference" in getattr(self.settings.objective, "frozen_trees", ()) and base is None

  def _reference_checkpoint(self) -> str:
    if not self.settings.initial_checkpoint_path:
      raise UserError(f"train.objective={self.settings.objective.name}: a full fine-tune needs "
                      "INITIAL_CHECKPOINT_PATH (the SFT policy, which is also the frozen reference)")
    return self.settings.initial_checkpoint_path

  def batch_shapes(self) -> dict[str, tuple[int, int]]:
    """The shapes of the global batch the step takes (the objective's features at the run's lengths)."""
    s = self.settings
    lengths = s.objective.batch_lengths(self.interface.features, s.task_feature_lengths, s.stream.pack)
    keys = s.objective.features(self.interface.features)
    return {k: (s.batch_size, lengths[k]) for k in keys if k in lengths}

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.batch_sharding)
            for k, shape in self.batch_shapes().items()}

  def batch_shards(self) -> int:
    """How many pieces the batch axis is split into on the mesh."""
    entry = self.batch_sharding.spec[0]
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(self.mesh.shape[a] for a in axes)

  def with_trainable(self, trainable: Trainable) -> Built:
    """The same run with another strategy instance (a resumed PEFT run's base reference)."""
    return dataclasses.replace(self, trainable=trainable,
                               step_fn=_step_fn(self.settings, self.interface, trainable, self.optimizer,
                                                self.schedule, self.state_shardings, self.batch_sharding,
                                                self.frozen_abstract()))


def _step_fn(settings, iface, trainable, optimizer, schedule, state_shardings, batch_sharding, frozen_abstract):
  frozen_shardings = jax.tree_util.tree_map(lambda x: x.sharding, frozen_abstract)
  return jit_train_step(iface, optimizer, schedule, state_shardings, batch_sharding, frozen_shardings,
                        objective=settings.objective, trainable=trainable,
                        num_microbatches=settings.num_microbatches,
                        dropout_seed=settings.seed if trainable.uses_dropout else None)


def build(settings: TrainSettings, devices: list | None = None) -> Built:
  """The run on `devices` (default: every device of this process group; `itjax compile`: a TPU topology's)."""
  cfg = settings.model_config
  family = family_of(cfg)
  mesh = mesh_lib.create_mesh(devices=devices)
  rules = mesh_lib.logical_axis_rules()
  iface = family.interface(cfg)
  trainable = trainable_for(cfg, initial_checkpoint=settings.initial_checkpoint_path, seed=settings.seed)
  optimizer, schedule = make_optimizer()
  abstract_state, state_shardings = trainable.abstract_state(optimizer, mesh, rules)
  batch_sharding = mesh_lib.batch_sharding(mesh, rules)
  built = Built(settings=settings, family=family, interface=iface, trainable=trainable, optimizer=optimizer,
                schedule=schedule, mesh=mesh, rules=rules, state_shardings=state_shardings,
                abstract_state=abstract_state, batch_sharding=batch_sharding, step_fn=None)
  if settings.batch_size % built.batch_shards():
    raise UserError(f"train.batch_size={settings.batch_size} must divide by the {built.batch_shards()} batch shards "
                    f"of mesh {dict(mesh.shape)} (create_mesh.mesh_shape, logical_axis_rules 'batch')")
  return dataclasses.replace(built, step_fn=_step_fn(settings, iface, trainable, optimizer, schedule, state_shardings,
                                                     batch_sharding, built.frozen_abstract()))
