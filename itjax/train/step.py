"""Loss and the jitted train step (with gradient accumulation)."""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from itjax.train.state import TrainState

Batch = Mapping[str, jax.Array]


def model_inputs(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(tokens, segment_ids, positions) for a decoder batch, packed or not."""
  tokens = batch["decoder_input_tokens"]
  if "decoder_segment_ids" in batch:
    return tokens, batch["decoder_segment_ids"], batch["decoder_positions"]
  segments = (batch["decoder_target_tokens"] > 0).astype(jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return tokens, segments, positions


def cross_entropy_sums(logits, targets, weights, z_loss: float = 0.0, label_smoothing: float = 0.0):
  """Weighted sums (loss, z_loss, weight, correct) so microbatches add up exactly."""
  log_z = jax.nn.logsumexp(logits, axis=-1)
  if label_smoothing:
    soft = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    nll = -jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1)
  else:
    nll = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  zl = z_loss * jnp.square(log_z)
  w = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum((nll + zl) * w), "z_loss": jnp.sum(zl * w), "weight": jnp.sum(w),
          "correct": jnp.sum(correct * w)}


def loss_sums(model: nn.Module, params, batch: Batch, z_loss: float = 0.0, label_smoothing: float = 0.0):
  tokens, segments, positions = model_inputs(batch)
  logits = model.apply({"params": params}, tokens, segments, positions)
  return cross_entropy_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], z_loss,
                            label_smoothing)


def train_step(state: TrainState, batch: Batch, *, model: nn.Module, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule, num_microbatches: int = 1, z_loss: float = 0.0,
               label_smoothing: float = 0.0) -> tuple[TrainState, dict]:
  """One optimizer update; the loss is normalized per target token over the whole batch."""

  def grad_sums(params, mb):
    def f(p):
      sums = loss_sums(model, p, mb, z_loss, label_smoothing)
      return sums["loss"], sums
    return jax.grad(f, has_aux=True)(params)

  if num_microbatches == 1:
    grads, sums = grad_sums(state.params, batch)
  else:
    micro = jax.tree_util.tree_map(
        lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:]), batch)

    def body(carry, mb):
      g, s = grad_sums(state.params, mb)
      return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(grad_sums, state.params,
                                                                   jax.tree_util.tree_map(lambda x: x[0], micro)))
    (grads, sums), _ = jax.lax.scan(body, zeros, micro)

  denom = jnp.maximum(sums["weight"], 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": sums["loss"] / denom, "z_loss": sums["z_loss"] / denom, "accuracy": sums["correct"] / denom,
             "target_tokens": sums["weight"], "grad_norm": optax.global_norm(grads),
             "learning_rate": schedule(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
