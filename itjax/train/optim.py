"""Optimizers and learning-rate schedules (optax), configured in gin."""

from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import optax

from itjax.errors import UserError


@gin.configurable
def learning_rate_schedule(base_learning_rate: float = 1e-3, schedule: str = "constant", warmup_steps: int = 0,
                           decay_steps: int | None = None, end_factor: float = 0.0, *,
                           warmup_fraction: float | None = None, total_steps: int | None = None) -> optax.Schedule:
  """constant | cosine | linear | rsqrt, each after a linear warmup.

  Warmup lasts `warmup_steps`, or `warmup_fraction` of `total_steps` (rounded); cosine and linear decay over
  `decay_steps`, by default the rest of `total_steps` (runs/finetune.gin sets total_steps = %TRAIN_STEPS, so a
  schedule written as fractions follows TRAIN_STEPS when it is overridden).
  """
  if warmup_fraction is not None:
    if warmup_steps:
      raise UserError("learning_rate_schedule: set warmup_steps or warmup_fraction, not both")
    if not 0 <= warmup_fraction < 1 or not total_steps:
      raise UserError(f"learning_rate_schedule.warmup_fraction={warmup_fraction!r} needs 0 <= fraction < 1 and "
                      f"total_steps (e.g. %TRAIN_STEPS), got total_steps={total_steps!r}")
    warmup_steps = round(warmup_fraction * total_steps)
  if decay_steps is None:
    decay_steps = total_steps - warmup_steps if total_steps else 0
  if schedule == "constant":
    main = optax.constant_schedule(base_learning_rate)
  elif schedule == "cosine":
    main = optax.cosine_decay_schedule(base_learning_rate, max(decay_steps, 1), alpha=end_factor)
  elif schedule == "linear":
    main = optax.linear_schedule(base_learning_rate, base_learning_rate * end_factor, max(decay_steps, 1))
  elif schedule == "rsqrt":  # T5: lr / sqrt(max(step, warmup))
    main = lambda step: base_learning_rate * jax.lax.rsqrt(jax.numpy.maximum(step + warmup_steps, 1.0)) * (
        max(warmup_steps, 1) ** 0.5)
  else:
    raise UserError(f"learning_rate_schedule.schedule={schedule!r}: expected constant, cosine, linear or rsqrt")
  if warmup_steps <= 0:
    return main
  warm = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
  return optax.join_schedules([warm, main], [warmup_steps])


def _decay_mask(params):
  """Weight decay on matrices only (not norms' scales or biases)."""
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


STATE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def with_state_dtype(tx: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
  """`tx` keeping its floating-point state (Adam's moments, Adafactor's factors) in `dtype`, each update computed
  in float32 from the upcast state: bfloat16 halves the optimizer state's memory (2 of Adam's 12 bytes per
  parameter become 1 each), at bfloat16's 8-bit mantissa for the moments."""

  def cast(tree, to):
    return jax.tree.map(lambda x: x.astype(to) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)

  def init(params):
    return cast(tx.init(params), dtype)

  def update(updates, state, params=None):
    out, new = tx.update(updates, cast(state, jnp.float32), params)
    return out, cast(new, dtype)

  return optax.GradientTransformation(init, update)


@gin.configurable
def make_optimizer(name: str = "adamw", weight_decay: float = 0.0, clip_grad_norm: float | None = 1.0,
                   b1: float = 0.9, b2: float = 0.95, state_dtype: str = "float32"
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer and its schedule: adamw | adafactor (T5 defaults); `state_dtype` "bfloat16" stores its state in
  bfloat16 (`with_state_dtype`)."""
  if state_dtype not in STATE_DTYPES:
    raise UserError(f"make_optimizer.state_dtype={state_dtype!r}: expected {' or '.join(STATE_DTYPES)}")
  lr = learning_rate_schedule()
  if name == "adamw":
    opt = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask)
  elif name == "adafactor":
    opt = optax.adafactor(lr, weight_decay_rate=weight_decay or None, weight_decay_mask=_decay_mask)
  else:
    raise UserError(f"make_optimizer.name={name!r}: expected adamw or adafactor")
  if clip_grad_norm:
    opt = optax.chain(optax.clip_by_global_norm(clip_grad_norm), opt)
  if state_dtype != "float32":
    opt = with_state_dtype(opt, STATE_DTYPES[state_dtype])
  return opt, lr
