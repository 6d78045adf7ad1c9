"""Loss and the jitted train step (with gradient accumulation).

The loss is a weighted sum over target tokens divided by a normalizing factor,
chosen as in T5X (`loss_normalizing_factor`):

- "num_real_target_tokens" (default): mean over the batch's real target tokens;
- "num_total_target_tokens": sum over the batch / (batch x length), padding included;
- "average_per_sequence": each (packed) sequence's mean, averaged over sequences;
- a number: sum over the batch / that constant.

Every factor is a sum over the batch, so gradient accumulation over
microbatches gives exactly the full-batch update.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from itjax.errors import UserError
from itjax.models.interface import interface_for
from itjax.peft.method import combine
from itjax.train.state import TrainState

Batch = Mapping[str, jax.Array]
LOSS_NORMALIZATIONS = ("num_real_target_tokens", "num_total_target_tokens", "average_per_sequence")
LossNormalization = str | float


def check_loss_normalizing_factor(factor: LossNormalization) -> LossNormalization:
  """Validates (and lower-cases) a `loss_normalizing_factor` setting."""
  if isinstance(factor, str) and factor.lower() in LOSS_NORMALIZATIONS:
    return factor.lower()
  if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0:
    return float(factor)
  raise UserError(f"loss_normalizing_factor={factor!r}: expected a positive number or one of "
                  f"{', '.join(LOSS_NORMALIZATIONS)}")


def decoder_segments(batch: Batch) -> jax.Array:
  """Segment ids of the decoder (target) side: packed ids, or 1 on real target tokens."""
  if "decoder_segment_ids" in batch:
    return batch["decoder_segment_ids"]
  return (batch["decoder_target_tokens"] > 0).astype(jnp.int32)


def per_sequence_weights(weights: jax.Array, segments: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(weights / the token count of their (row, segment), number of sequences with a weighted token)."""
  rows, length = weights.shape
  w = weights.astype(jnp.float32)
  ids = (jnp.arange(rows)[:, None] * (length + 1) + jnp.clip(segments, 0, length)).reshape(-1)
  counts = jax.ops.segment_sum(w.reshape(-1), ids, num_segments=rows * (length + 1))
  per_token = counts[ids].reshape(rows, length)
  return w / jnp.maximum(per_token, 1.0), jnp.sum(counts > 0).astype(jnp.float32)


def cross_entropy_sums(logits, targets, weights, z_loss: float = 0.0, label_smoothing: float = 0.0,
                       loss_weights=None):
  """Weighted sums (loss, z_loss, weight, correct) so microbatches add up exactly.

  `loss_weights` (default `weights`) weight the loss and z_loss; `weights` the token counts and accuracy.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  if label_smoothing:
    soft = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    nll = -jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1)
  else:
    nll = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  zl = z_loss * jnp.square(log_z)
  w = weights.astype(jnp.float32)
  lw = w if loss_weights is None else loss_weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum((nll + zl) * lw), "z_loss": jnp.sum(zl * lw), "weight": jnp.sum(w),
          "correct": jnp.sum(correct * w)}


def loss_sums(model: nn.Module, params, batch: Batch, z_loss: float = 0.0, label_smoothing: float = 0.0,
              loss_normalizing_factor: LossNormalization = "num_real_target_tokens",
              dropout_rng: jax.Array | None = None):
  """Summed loss terms of a decoder-only or encoder-decoder batch (see `itjax.models.interface`)."""
  logits = interface_for(model).logits(params, batch, dropout_rng=dropout_rng)
  weights = batch["decoder_loss_weights"]
  loss_weights, sequences = None, jnp.zeros((), jnp.float32)
  if loss_normalizing_factor == "average_per_sequence":
    loss_weights, sequences = per_sequence_weights(weights, decoder_segments(batch))
  sums = cross_entropy_sums(logits, batch["decoder_target_tokens"], weights, z_loss, label_smoothing, loss_weights)
  return {**sums, "sequences": sequences}


def normalizer(sums: Mapping[str, jax.Array], factor: LossNormalization, batch_shape: tuple[int, ...]) -> jax.Array:
  """What the summed loss is divided by, for a batch of `batch_shape` (rows, length)."""
  if factor == "num_real_target_tokens":
    return jnp.maximum(sums["weight"], 1.0)
  if factor == "num_total_target_tokens":
    return jnp.asarray(float(batch_shape[0] * batch_shape[1]), jnp.float32)
  if factor == "average_per_sequence":
    return jnp.maximum(sums["sequences"], 1.0)
  return jnp.asarray(float(factor), jnp.float32)


def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def train_step(state: TrainState, batch: Batch, frozen=None, *, model: nn.Module,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule, num_microbatches: int = 1,
               z_loss: float = 0.0,
               label_smoothing: float = 0.0, loss_normalizing_factor: LossNormalization = "num_real_target_tokens",
               dropout_seed: int | None = None) -> tuple[TrainState, dict]:
  """One optimizer update on the loss normalized by `loss_normalizing_factor` over the whole batch.

  With `dropout_seed`, dropout is on (at the model config's rate) with keys derived from the seed, the
  step and the microbatch: a resumed run draws the same masks as an uninterrupted one.
  Metrics include `finite`: whether the loss, gradients and the updated state are all finite.
  With `frozen` (PEFT: the base params), `state.params` are the trainable PEFT variables alone: the model
  applies `combine(frozen, params)` and only the trainable ones get gradients and optimizer updates.
  """
  factor = check_loss_normalizing_factor(loss_normalizing_factor)
  step_key = None if dropout_seed is None else jax.random.fold_in(jax.random.key(dropout_seed), state.step)

  def grad_sums(params, mb, i):
    rng = None if step_key is None else jax.random.fold_in(step_key, i)

    def f(p):
      full = p if frozen is None else combine(frozen, p)
      sums = loss_sums(model, full, mb, z_loss, label_smoothing, factor, dropout_rng=rng)
      return sums["loss"], sums
    return jax.grad(f, has_aux=True)(params)

  if num_microbatches == 1:
    grads, sums = grad_sums(state.params, batch, 0)
  else:
    micro = jax.tree_util.tree_map(
        lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:]), batch)

    def body(carry, xs):
      mb, i = xs
      g, s = grad_sums(state.params, mb, i)
      return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
        grad_sums, state.params, jax.tree_util.tree_map(lambda x: x[0], micro), 0))
    (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(num_microbatches)))

  denom = normalizer(sums, factor, batch["decoder_target_tokens"].shape)
  grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  tokens = jnp.maximum(sums["weight"], 1.0)
  metrics = {"loss": sums["loss"] / denom, "z_loss": sums["z_loss"] / denom, "accuracy": sums["correct"] / tokens,
             "target_tokens": sums["weight"], "grad_norm": grad_norm, "learning_rate": schedule(state.step),
             "finite": jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm) & all_finite((params, opt_state))}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_train_step(model, optimizer, schedule, shardings, batch_sharding, *, num_microbatches: int = 1,
                   z_loss: float = 0.0, label_smoothing: float = 0.0,
                   loss_normalizing_factor: str | float = "num_real_target_tokens",
                   dropout_seed: int | None = None, frozen_shardings: tuple = ()):
  """The train step as `itjax train` runs and `itjax compile` lowers it: state and batch (and a PEFT run's
  frozen base) sharded in, the state donated."""
  return jax.jit(
      functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule,
                        num_microbatches=num_microbatches, z_loss=z_loss, label_smoothing=label_smoothing,
                        loss_normalizing_factor=check_loss_normalizing_factor(loss_normalizing_factor),
                        dropout_seed=dropout_seed),
      in_shardings=(shardings, batch_sharding, *frozen_shardings), out_shardings=(shardings, None),
      donate_argnums=(0,))
