"""The jitted train step, the same for every objective and trainable-state strategy.

One optimizer update: the objective's loss sums over the batch (accumulated over microbatches by
a `lax.scan`, so accumulation gives exactly the full-batch update), divided by the objective's
normalizer, differentiated with respect to the trainable params only (the strategy rebuilds the
params the model applies from them and the frozen trees), then the optimizer. Imports neither
TensorFlow nor seqio: GPU benchmarks and `itjax compile` use it without them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from itjax.core.trainable import Trainable, TrainState
from itjax.models.families import interface_for
from itjax.train.objectives.base import Batch, Objective
from itjax.train.objectives.cross_entropy import CrossEntropy

SFT = CrossEntropy()  # the default objective
Frozen = Mapping[str, Any]  # "base": a PEFT run's frozen base; an objective's own trees (e.g. "reference")


def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def train_step(state: TrainState, batch: Batch, frozen: Frozen | None = None, *, model: Any,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               objective: Objective = SFT, trainable: Trainable | None = None, num_microbatches: int = 1,
               dropout_seed: int | None = None) -> tuple[TrainState, dict]:
  """One optimizer update on `objective`'s normalized loss over the whole batch (an objective with
  `updates_per_batch` > 1, PPO's epochs, makes that many on the batch it prepared; metrics are the last one's).

  model: the model interface (or a config / module of any family). trainable: the strategy that
  turns `state.params` and `frozen["base"]` into the params the model applies (None: the state
  holds them all). With `dropout_seed`, dropout is on (at the model config's rate) with keys derived
  from the seed, the step and the microbatch: a resumed run draws the same masks as an uninterrupted one.
  Metrics include `finite`: whether the loss, gradients and the updated state are all finite.
  """
  iface = interface_for(model)
  frozen = dict(frozen or {})
  step_key = None if dropout_seed is None else jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  prepare = getattr(objective, "prepare", None)
  if prepare is not None:  # an RL objective: rollouts, rewards and advantages from the current policy, no gradient
    current = state.params if trainable is None else trainable.full_params(state.params, frozen.get("base"))
    batch = prepare(iface, jax.lax.stop_gradient(current), batch, frozen, state.step)

  def grad_sums(params, mb, i, key):
    rng = None if key is None else jax.random.fold_in(key, i)

    def f(p):
      full = p if trainable is None else trainable.full_params(p, frozen.get("base"))
      sums = objective.loss_sums(iface, full, mb, frozen, rng)
      return sums["loss"], sums
    return jax.grad(f, has_aux=True)(params)

  def update(params, opt_state, key):
    if num_microbatches == 1:
      grads, sums = grad_sums(params, batch, 0, key)
    else:
      micro = jax.tree_util.tree_map(
          lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:]), batch)

      def body(carry, xs):
        mb, i = xs
        g, s = grad_sums(params, mb, i, key)
        return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
          grad_sums, params, jax.tree_util.tree_map(lambda x: x[0], micro), 0, key))
      (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(num_microbatches)))
    denom = objective.normalizer(sums, batch["decoder_target_tokens"].shape)
    grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads, sums, denom

  # PPO's epochs: several optimizer updates on one prepared (rollout) batch; one for every other objective.
  params, opt_state, finite = state.params, state.opt_state, jnp.asarray(True)
  epochs = getattr(objective, "updates_per_batch", 1)
  for epoch in range(epochs):
    key = step_key if step_key is None or epoch == 0 else jax.random.fold_in(step_key, 1_000_003 + epoch)
    params, opt_state, grads, sums, denom = update(params, opt_state, key)
    if epoch < epochs - 1:
      finite &= jnp.isfinite(sums["loss"])
  grad_norm = optax.global_norm(grads)
  metrics = {**objective.metrics(sums, denom), "grad_norm": grad_norm, "learning_rate": schedule(state.step),
             "finite": finite & jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
             & all_finite((params, opt_state))}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_train_step(model: Any, optimizer: optax.GradientTransformation, schedule: optax.Schedule, shardings: Any,
                   batch_sharding: Any, frozen_shardings: Frozen, *, objective: Objective,
                   trainable: Trainable | None = None, num_microbatches: int = 1, dropout_seed: int | None = None):
  """The train step as `itjax train` runs and `itjax compile` lowers it: state, batch and frozen trees
  sharded in, the state donated (frozen trees never are)."""
  return jax.jit(
      functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule, objective=objective,
                        trainable=trainable, num_microbatches=num_microbatches, dropout_seed=dropout_seed),
      in_shardings=(shardings, batch_sharding, dict(frozen_shardings)), out_shardings=(shardings, None),
      donate_argnums=(0,))
