"""Trainable-state strategies: which parameters train, and how checkpoints hold them.

Two strategies share one interface, so the trainer, `itjax compile` and `ModelDir` never branch on
parameter-efficient tuning:

- `FullParams`: every parameter trains; the train state holds all of them and their optimizer state.
- `ParameterEfficient`: the model config carries a `PeftConfig`; only the PEFT variables (LoRA,
  prefixes, adapters) train, so the optimizer keeps state for them alone and checkpoints store
  them alone. The frozen base is a separate tree, sharded by the same logical-axis rules as full
  fine-tuning and stored in `PeftConfig.base_dtype`, its attention and MLP kernels quantized when
  `PeftConfig.base_quant` says so (QLoRA: `itjax.models.quant`; codes and scales carry logical axes
  too); each checkpoint's metadata names where it comes from (`BASE_META`: the initial checkpoint's
  step dir, or the seed of a from-scratch base), so resuming, evaluating and exporting reload it from
  there, and quantize it again the same way.

Every state is created directly sharded (never whole on one device).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from itjax.core import trees
from itjax.core.checkpoints import restore_params
from itjax.core.mesh import Rules, tree_shardings
from itjax.core.model_info import InfoGroup
from itjax.errors import UserError
from itjax.models import quant
from itjax.models.layers import resolve_dtype
from itjax.models.peft_hooks import combine, flatten, split, unflatten, with_peft

log = logging.getLogger("itjax")
BASE_META = "peft_base"  # checkpoint metadata key: {"checkpoint": abs path | None, "seed": int}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # the trainable params: all of them, or the PEFT variables alone
  opt_state: Any


class Trainable:
  """What the trainer, `itjax compile` and `ModelDir` ask of a strategy; `FullParams` and
  `ParameterEfficient` differ in the trainable tree, the frozen one and the checkpoint metadata."""

  def __init__(self, cfg: Any):
    self.cfg = cfg

  # --- the trainable tree and its state ---------------------------------------------------------------------------
  def trainable_fn(self, rng: jax.Array) -> Any:
    """rng -> the boxed trainable params."""
    raise NotImplementedError

  def _boxed_state(self, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    # Optimizer state built from the *boxed* params inherits their logical axes.
    params = self.trainable_fn(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  def state_specs(self, optimizer: optax.GradientTransformation) -> TrainState:
    """Logical PartitionSpecs of every leaf of the train state (no allocation)."""
    return trees.specs_and_shapes(lambda r: self._boxed_state(optimizer, r))[0]

  def abstract_state(self, optimizer: optax.GradientTransformation, mesh: Mesh, rules: Rules
                     ) -> tuple[TrainState, TrainState]:
    """(ShapeDtypeStructs with shardings, shardings) of the train state: what Orbax restores and XLA compiles."""
    return trees.abstract_sharded(lambda r: self._boxed_state(optimizer, r), mesh, rules)

  def create_state(self, optimizer: optax.GradientTransformation, mesh: Mesh, rules: Rules, rng: jax.Array
                   ) -> tuple[TrainState, TrainState]:
    """(state, shardings): the trainable params and their optimizer state, initialized in place on the mesh."""
    shardings = tree_shardings(self.state_specs(optimizer), mesh, rules)
    return trees.init_sharded(lambda r: self._boxed_state(optimizer, r), shardings, mesh, rules, rng), shardings

  @property
  def uses_dropout(self) -> bool:
    """Whether training steps draw dropout masks (the config's dropout_rate; LoRA's dropout under PEFT)."""
    return getattr(self.cfg, "dropout_rate", 0.0) > 0

  def abstract_trainable(self, mesh: Mesh, rules: Rules) -> Any:
    return trees.abstract_sharded(self.trainable_fn, mesh, rules)[0]

  # --- the frozen tree --------------------------------------------------------------------------------------------
  def abstract_frozen(self, mesh: Mesh, rules: Rules) -> Any:
    """ShapeDtypeStructs with shardings of the frozen tree the step reads beside the state (None: none)."""
    return None

  def load_frozen(self, mesh: Mesh, rules: Rules) -> Any:
    """The frozen tree, sharded on `mesh` (None: none)."""
    return None

  def full_params(self, trainable: Any, frozen: Any) -> Any:
    """The params the model applies, from the trainable and the frozen trees (a pure function: jit-safe)."""
    return trainable

  # --- where training starts and what checkpoints record ----------------------------------------------------------
  def start(self, state: TrainState, shardings: TrainState, optimizer: optax.GradientTransformation,
            initial_checkpoint: str | None) -> TrainState:
    """The state at step 0 of a run that does not resume."""
    return state

  def checkpoint_meta(self) -> dict:
    """What every checkpoint's metadata must record for this strategy to be rebuilt."""
    return {}

  def from_meta(self, meta: dict, where: str) -> Trainable:
    """The strategy a checkpoint with metadata `meta` (from `where`) was written with."""
    return self

  def baseline_params(self, frozen: Any, shardings: TrainState, mesh: Mesh, rules: Rules, rng: jax.Array) -> Any:
    """Full params with the trainable part freshly initialized: the untrained baseline of a run."""
    return self.full_params(trees.init_sharded(self.trainable_fn, shardings.params, mesh, rules, rng), frozen)

  def load_params(self, step_dir: str, mesh: Mesh, rules: Rules) -> Any:
    """The full params of a checkpoint written with this strategy, sharded on `mesh`."""
    return self.full_params(self.load_trainable(step_dir, mesh, rules), self.load_frozen(mesh, rules))

  def load_trainable(self, step_dir: str, mesh: Mesh, rules: Rules) -> Any:
    """The trainable params of a checkpoint (optimizer state left unread)."""
    return restore_params(step_dir, self.abstract_trainable(mesh, rules))

  # --- model-info.txt ---------------------------------------------------------------------------------------------
  def info_groups(self, optimizer: optax.GradientTransformation, state: TrainState, shardings: TrainState,
                  frozen: Any, mesh: Mesh, rules: Rules) -> list[InfoGroup]:
    specs = self.state_specs(optimizer)
    return [InfoGroup("params", state.params, specs.params, shardings.params),
            InfoGroup("opt_state", state.opt_state, specs.opt_state, shardings.opt_state)]

  def info_header(self, counts: dict[str, int]) -> str:
    return f"# total parameters: {counts.get('params', 0):,}"


class FullParams(Trainable):
  """Full fine-tuning: every parameter trains."""

  def trainable_fn(self, rng: jax.Array) -> Any:
    return trees.param_fn(self.cfg)(rng)

  def start(self, state: TrainState, shardings: TrainState, optimizer: optax.GradientTransformation,
            initial_checkpoint: str | None) -> TrainState:
    """Fine-tuning: the initial checkpoint's params and a fresh optimizer state; else the initialization."""
    if not initial_checkpoint:
      return state
    log.info("fine-tuning from %s", initial_checkpoint)
    params = restore_params(initial_checkpoint, trees.sharded(state.params, shardings.params), fresh=state.params)
    return state.replace(params=params, opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params))


class ParameterEfficient(Trainable):
  """PEFT: the PEFT variables train; the frozen base comes from `base` ({"checkpoint": step dir | None, "seed"})."""

  def __init__(self, cfg: Any, base: dict):
    super().__init__(cfg)
    self.base = base
    self.base_cfg = with_peft(cfg, None)
    self.base_dtype = resolve_dtype(cfg.peft.base_dtype)

  def trainable_fn(self, rng: jax.Array) -> Any:
    return split(trees.param_fn(self.cfg)(rng))[1]

  @property
  def uses_dropout(self) -> bool:
    return super().uses_dropout or self.cfg.peft.lora_dropout > 0

  def _cast(self, x):
    return x.astype(self.base_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  def _float_base_fn(self, rng: jax.Array) -> Any:
    # Boxed, in the storage dtype: a bf16 base never exists in fp32 whole.
    cast = lambda b: b.replace_boxed(self._cast(b.unbox())) if isinstance(b, nn.Partitioned) else self._cast(b)
    return jax.tree_util.tree_map(cast, trees.param_fn(self.base_cfg)(rng),
                                  is_leaf=lambda x: isinstance(x, nn.Partitioned))

  def _base_fn(self, rng: jax.Array) -> Any:
    # The frozen tree as stored: kernels quantized (from their `base_dtype` values) under QLoRA.
    base, peft = self._float_base_fn(rng), self.cfg.peft
    return base if peft.base_quant is None else quant.quantize_tree(base, peft.base_quant, peft.quant_block_size)

  def _quantize(self, base: Any, mesh: Mesh, rules: Rules) -> Any:
    """The restored float base with its kernels quantized one at a time, each float kernel freed once done
    (so the base never exists both in float and quantized whole)."""
    peft = self.cfg.peft
    shardings = flatten(trees.abstract_sharded(self._base_fn, mesh, rules)[1])
    fns, out = {}, {}
    for path, w in flatten(base).items():
      if quant.input_axes(path, w.ndim) is None:
        out[path] = w
        continue
      sh = {"codes": shardings[f"{path}/codes"], "scale": shardings[f"{path}/scale"]}
      key = (path.rsplit("/", 1)[-1], w.shape, w.dtype, sh["codes"], sh["scale"])
      if key not in fns:  # one compilation per kernel kind and shape, not per layer
        fn = functools.partial(quant.quantize_kernel, path=path, fmt=peft.base_quant, block_size=peft.quant_block_size)
        fns[key] = jax.jit(fn, out_shardings=sh)
      q = fns[key](w)
      w.delete()
      out[f"{path}/codes"], out[f"{path}/scale"] = q["codes"], q["scale"]
    return unflatten(out)

  def abstract_frozen(self, mesh: Mesh, rules: Rules) -> Any:
    return trees.abstract_sharded(self._base_fn, mesh, rules)[0]

  def load_frozen(self, mesh: Mesh, rules: Rules) -> Any:
    if self.base.get("checkpoint"):
      abstract, shardings = trees.abstract_sharded(self._float_base_fn, mesh, rules)
      # Restored straight into the storage dtype (Orbax casts), then cast in place where it did not.
      base = restore_params(self.base["checkpoint"], abstract)
      base = jax.jit(lambda t: jax.tree_util.tree_map(self._cast, t), out_shardings=shardings, donate_argnums=0)(base)
      return base if self.cfg.peft.base_quant is None else self._quantize(base, mesh, rules)
    shardings = trees.abstract_sharded(self._base_fn, mesh, rules)[1]
    return trees.init_sharded(self._base_fn, shardings, mesh, rules, jax.random.key(self.base["seed"]))

  def full_params(self, trainable: Any, frozen: Any) -> Any:
    return combine(frozen, trainable)

  def checkpoint_meta(self) -> dict:
    return {BASE_META: self.base}

  def from_meta(self, meta: dict, where: str) -> Trainable:
    if BASE_META not in meta:
      raise UserError(f"{where}: model_config.json has a peft method but the checkpoint names no base "
                      f"(no {BASE_META!r} in its metadata); was it written by a PEFT run of itjax train?")
    return ParameterEfficient(self.cfg, meta[BASE_META])

  def info_groups(self, optimizer: optax.GradientTransformation, state: TrainState, shardings: TrainState,
                  frozen: Any, mesh: Mesh, rules: Rules) -> list[InfoGroup]:
    base_specs = trees.specs_and_shapes(self._base_fn)[0]
    base_shardings = tree_shardings(base_specs, mesh, rules)
    return [*super().info_groups(optimizer, state, shardings, frozen, mesh, rules),
            InfoGroup("frozen_base", frozen, base_specs, base_shardings)]

  def info_header(self, counts: dict[str, int]) -> str:
    peft = self.cfg.peft
    head = f"# PEFT ({'+'.join(peft.methods)}): trainable parameters: {counts.get('params', 0):,}; "
    if peft.base_quant is None:
      return head + f"frozen base parameters: {counts.get('frozen_base', 0):,} ({peft.base_dtype})"
    # Quantized kernels are stored as codes (nf4: two per byte) and scales: the count is of stored values.
    return head + (f"frozen base stored values: {counts.get('frozen_base', 0):,} (attention and MLP kernels "
                   f"{peft.base_quant}, the rest {peft.base_dtype})")


def trainable_for(cfg: Any, *, initial_checkpoint: str | None = None, seed: int = 0) -> Trainable:
  """The strategy of a model config: PEFT when it carries a method (base: the initial checkpoint, else a
  seed-`seed` initialization), full fine-tuning otherwise."""
  if cfg.peft is None:
    return FullParams(cfg)
  base = {"checkpoint": os.path.abspath(initial_checkpoint) if initial_checkpoint else None, "seed": seed}
  return ParameterEfficient(cfg, base)

