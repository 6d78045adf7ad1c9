"""The training loop: sharded state, jitted step, checkpoints, summaries, final eval.

`train` is the gin entry point of `itjax train`. It resumes from the latest
complete checkpoint in MODEL_DIR if there is one (model, optimizer, step and
data position), else starts from INITIAL_CHECKPOINT_PATH's params or from
scratch. SIGTERM (a preemption notice) saves a checkpoint and returns.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from collections.abc import Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from itjax.data.pipeline import numpy_batches, train_dataset
from itjax.data.registry import require_task
from itjax.errors import UserError
from itjax.eval.evaluator import run_eval
from itjax.models.config_io import save_model_config
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.train import partitioning
from itjax.train.checkpoints import Checkpointer, restore_params
from itjax.train.model_info import write_model_info
from itjax.train.optim import make_optimizer
from itjax.train.state import TrainState, abstract_state, create_train_state, init_params
from itjax.train.step import train_step
from itjax.train.summaries import MetricsWriter

log = logging.getLogger("itjax")


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._old = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _global_batch(local: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each host's piece (its rows of the batch axis)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def write_operative_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.operative_config_str())


@gin.configurable(denylist=["evaluate_at_end"])
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, model_config: DecoderConfig = gin.REQUIRED, seed: int = 0,
          pack: bool = True, log_every: int = 10, checkpoint_period: int = 100, keep_checkpoints: int | None = 3,
          num_microbatches: int = 1, z_loss: float = 0.0, label_smoothing: float = 0.0,
          initial_checkpoint_path: str | None = None, eval_mixtures: Mapping[str, str] | None = None,
          evaluate_at_end: bool = True) -> dict:
  """Trains until `train_steps` (total, counting resumed steps); returns the last metrics."""
  require_task(mixture_or_task_name)
  for name in (eval_mixtures or {}).values():
    require_task(name)
  if batch_size % jax.process_count() or batch_size % max(num_microbatches, 1):
    raise UserError(f"train.batch_size={batch_size} must divide by the process count ({jax.process_count()}) "
                    f"and train.num_microbatches ({num_microbatches})")
  model_dir = os.path.abspath(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  if jax.process_index() == 0:
    save_model_config(model_dir, model_config)

  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  model = Decoder(model_config)
  optimizer, schedule = make_optimizer()
  length = sum(task_feature_lengths.values())
  example = jnp.zeros((1, length), jnp.int32)
  state, shardings = create_train_state(model, optimizer, mesh, rules, jax.random.key(seed), example)
  ckpt = Checkpointer(model_dir, period=checkpoint_period, keep=keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    state, meta = ckpt.restore(start, abstract_state(model, optimizer, example, shardings))
    log.info("resumed from step %d (data position %d batches)", start, meta["data"]["batches"])
    start_batch = meta["data"]["batches"]
  else:
    start, start_batch = 0, 0
    if initial_checkpoint_path:
      params = restore_params(initial_checkpoint_path, jax.tree_util.tree_map(
          lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state.params, shardings.params))
      state = state.replace(params=params, opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params))
  if jax.process_index() == 0:
    write_model_info(os.path.join(model_dir, "model-info.txt"), state, shardings, model, optimizer, example)

  batch_sharding = partitioning.batch_sharding(mesh, rules)
  step_fn = jax.jit(
      functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule,
                        num_microbatches=num_microbatches, z_loss=z_loss, label_smoothing=label_smoothing),
      in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None), donate_argnums=(0,))
  ds = train_dataset(mixture_or_task_name, task_feature_lengths, batch_size // jax.process_count(), seed=seed,
                     shard_index=jax.process_index(), num_shards=jax.process_count(), pack=pack,
                     start_batch=start_batch)
  batches = numpy_batches(ds)
  writer = MetricsWriter(model_dir, train_steps, start)
  metrics: dict = {}
  step = start
  pending, window_t0, window_tokens = [], time.time(), 0.0

  def checkpoint(step: int, state: TrainState, force: bool = False) -> None:
    ckpt.save(step, state, {"data": {"batches": start_batch + step - start}, "seed": seed}, force=force)

  with _Preemption() as preempt, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    while step < train_steps:
      local = next(batches)
      window_tokens += float(np.sum(local["decoder_target_tokens"] > 0)) * jax.process_count()
      state, m = step_fn(state, _global_batch(local, batch_sharding))
      step += 1
      pending.append(m)
      if step == start + 1:
        write_operative_config(model_dir)
      if step % log_every == 0 or step == train_steps:
        fetched = jax.device_get(pending)
        metrics = {k: float(np.mean([p[k] for p in fetched])) for k in fetched[-1]}
        if not all(math.isfinite(p["loss"]) for p in fetched):
          ckpt.wait()
          raise FloatingPointError(f"non-finite loss at step {step - len(fetched) + 1}..{step}; last good "
                                   f"checkpoint: step {ckpt.latest_step()} in {ckpt.directory}")
        elapsed = time.time() - window_t0
        metrics.update(tokens_per_s=window_tokens / elapsed, step_time_s=elapsed / len(fetched))
        writer.write(step, metrics)
        writer.advance(len(fetched))
        pending, window_t0, window_tokens = [], time.time(), 0.0
      checkpoint(step, state)
      if preempt.requested:
        log.warning("SIGTERM: saving step %d and stopping", step)
        break
    checkpoint(step, state, force=step != ckpt.latest_step())
    ckpt.wait()
    writer.close()

  write_operative_config(model_dir)
  if evaluate_at_end and eval_mixtures and not preempt.requested and step >= train_steps:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      init = init_params(model, jax.random.key(seed), example, shardings.params)
    run_eval(model, {"init": init, f"step_{step}": state.params}, eval_mixtures,
             task_feature_lengths, os.path.join(model_dir, "eval", "heldout"), mesh=mesh, rules=rules,
             title=f"{mixture_or_task_name}: zero-shot evaluation")
  ckpt.close()
  return {"step": step, **metrics}
