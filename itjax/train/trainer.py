"""The training loop: sharded state, jitted step, checkpoints, summaries, in-loop evaluation.

`train(settings, evaluator=...)` runs `itjax train`. It resumes from the latest complete checkpoint in
MODEL_DIR if there is one (model, optimizer, step and data position; onto whatever mesh this run
has), else starts at step 0 from INITIAL_CHECKPOINT_PATH's params or from scratch. Evaluation is
the caller's: `evaluator` builds an `Evaluator` (`itjax.eval.training.TrainingEval` for the CLI),
so this module never imports the eval layer.

Robustness: a run killed at any point and restarted continues with exactly the losses of an
uninterrupted one (the data stream is a function of the seed and `data_shards`, and every checkpoint
holds each data shard's iterator state, restored in seconds at any position: `stream_settings.resume`).
SIGTERM saves the current step and returns normally; non-finite values stop the run before they are
checkpointed (`itjax.train.loop`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import flax.linen as nn
import gin
import jax
import numpy as np
import seqio

from itjax.core import vocabulary as core_vocabulary
from itjax.core.checkpoints import Checkpointer, blob_names, read_blob
from itjax.core.distributed import initialize_distributed
from itjax.core.model_dir import find_model_dir, save_model_config
from itjax.core.model_info import write_model_info
from itjax.core.tokenizer import copy_tokenizer_files, load_tokenizer, model_dir_tokenizer
from itjax.data.pipeline import numpy_batches, train_dataset
from itjax.data.quality import NgramIndex, eval_index
from itjax.data.registry import require_task
from itjax.data.stream_state import HostStream, saved_counts
from itjax.data.stream_stats import StreamStats
from itjax.data.truncation import KEEP_START
from itjax.data.truncation import run_default as run_truncation
from itjax.data.vocab import check_vocabulary_fits, load_vocabulary
from itjax.errors import UserError, make_dirs
from itjax.models.features import PREFERENCE_IDS, FeatureLayout
from itjax.train import perf
from itjax.train.build import Built, build
from itjax.train.loop import Loop, NonFiniteError, Preemption  # noqa: F401  (NonFiniteError: part of the API)
from itjax.train.settings import StreamSettings, TrainSettings, train_settings
from itjax.train.summaries import MetricsWriter
from itjax.train.validation import Validation, global_batch, validation_batches

log = logging.getLogger("itjax")


class Evaluator(Protocol):
  """In-loop and end-of-training evaluation, as the trainer uses it."""

  def splits(self) -> tuple[str, ...]:
    """The eval splits it reads (what `stream_settings.decontaminate` removes from training)."""
    ...

  def check_metric(self, name: str) -> None:
    """UserError unless `name` ("SET/METRIC") is a metric it reports."""
    ...

  def evaluate(self, step: int, params: Any) -> dict[str, float]:
    """Scores of the params at `step` ({"SET/METRIC": value}, on every process)."""
    ...

  def final(self, params_by_name: Mapping[str, Any], step: int) -> None:
    """The end-of-training report (the untrained baseline beside the last step)."""
    ...


class EvaluatorFactory(Protocol):
  def __call__(self, *, interface: Any, mesh: Any, rules: Any, eval_mixtures: Mapping[str, str],
               task_feature_lengths: Mapping[str, int], model_dir: str, train_mixture: str,
               vocabulary: Any) -> Evaluator: ...


def host_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                 seed: int, data_shards: int, start_batch: int, layout: FeatureLayout, stream: StreamSettings,
                 vocabulary: seqio.Vocabulary, decontaminate: NgramIndex | None = None,
                 stats: StreamStats | None = None, truncation: str = KEEP_START, pairs: bool = False) -> HostStream:
  """This process's rows of each global batch: its `data_shards / process_count` shards, concatenated.

  The global batch is shards 0..data_shards-1 stacked (batch_size / data_shards rows each), whatever
  the number of processes, so runs with equal `data_shards` see the same batches on 1 or N hosts.
  `start_batch` > 0 replays that many batches (`stream_settings.resume="replay"`); the stream's
  `restore` continues from saved states instead.
  """
  per_host = data_shards // jax.process_count()
  shards = {}
  for j in range(per_host):
    index, side = jax.process_index() * per_host + j, []
    shards[index] = numpy_batches(train_dataset(
        mixture_or_task_name, task_feature_lengths, batch_size // data_shards, seed=seed, shard_index=index,
        num_shards=data_shards, pack=stream.pack, start_batch=start_batch, layout=layout, packer=stream.packer,
        dedup=stream.dedup, decontaminate=decontaminate, stats=stats, vocabulary=vocabulary, truncation=truncation,
        side_state=side, pairs=pairs), stats, side)
  return HostStream(shards, data_shards, stats, (jax.process_index(), jax.process_count()))


def _data_resume(policy: str, step_dir: str | None, meta: dict, data_shards: int, seed: int) -> tuple[str, int]:
  """How this run finds its place in the data (`stream_settings.resume`, see there): (policy, stream seed)."""
  if step_dir is None:
    return "start", seed
  saved = meta["data"]
  saved_seed = saved.get("seed", seed)
  if policy == "restore" and not saved.get("state"):
    log.warning("data stream: step %s was saved without its stream's state; replaying %d batches to reach its "
                "position (this takes time proportional to it)", os.path.basename(step_dir), saved["batches"])
    return "replay", saved_seed
  if policy == "restore" and saved.get("shards") != data_shards:
    policy = "fresh"
    log.warning("data stream: the checkpoint read %s data shards and this run reads %d, so the saved stream "
                "cannot continue exactly; starting a fresh stream instead", saved.get("shards"), data_shards)
  if policy == "fresh":
    fresh = (saved_seed * 1_000_003 + int(os.path.basename(step_dir)) + 1) % 2**31
    log.warning("data stream: fresh, seed %d (was %d): nothing is replayed; within each task's current pass, "
                "examples already trained on may come again and others may not come before the next pass",
                fresh, saved_seed)
    return "fresh", fresh
  if policy == "restore":
    log.info("data stream: restoring its saved state (%d data shards): continuing exactly at batch %d",
             data_shards, saved["batches"])
  return policy, saved_seed


def _resolve_data_shards(requested: int | None, saved: int | None, batch_size: int) -> int:
  """The data shard count: as set, else the checkpoint's (so resuming on more hosts keeps the stream)."""
  n = jax.process_count()
  if requested is not None:
    shards = requested
    if saved and saved != requested:
      log.warning("stream_settings.data_shards=%d but the checkpoint read %d shards: the data order changes",
                  requested, saved)
  elif saved and saved % n == 0 and batch_size % saved == 0:
    shards = saved
  else:
    shards = n
    if saved and saved != n:
      log.warning("checkpoint read %d data shards; %d processes cannot: reading %d (the data order changes)",
                  saved, n, n)
  if shards < 1 or shards % n or batch_size % shards:
    raise UserError(f"stream_settings.data_shards={shards} must be a multiple of the process count ({n}) and "
                    f"divide train.batch_size={batch_size}")
  return shards


def write_operative_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.operative_config_str())


def train(settings: TrainSettings | None = None, *, evaluator: EvaluatorFactory | None = None,
          evaluate_at_end: bool = True) -> dict:
  """Trains until `settings.train_steps` (total, counting resumed steps); returns the last metrics, with
  "preempted" (SIGTERM stopped it first, after saving) and the command's "exit_status".

  settings: default `train_settings()`, i.e. what gin says. evaluator: builds the in-loop / final
  evaluation (needed when EVAL_MIXTURES is set). evaluate_at_end: the final report (init vs last step).
  """
  with Preemption(multiprocess=initialize_distributed()) as preempt:
    return _run(settings if settings is not None else train_settings(), evaluator, evaluate_at_end, preempt)


def _check(s: TrainSettings, evaluator: EvaluatorFactory | None, evaluate_at_end: bool) -> None:
  run_truncation()  # gin's truncation.default is checked now, not when the stream is built
  require_task(s.mixture_or_task_name)
  for name in (s.eval_mixtures or {}).values():
    require_task(name)
  if s.batch_size % jax.process_count():
    raise UserError(f"train.batch_size={s.batch_size} must divide by the process count ({jax.process_count()})")
  wants_eval = s.eval_mixtures and (s.eval_period or evaluate_at_end or s.stream.decontaminate)
  if wants_eval and evaluator is None:
    raise UserError("EVAL_MIXTURES is set but no evaluator was given to itjax.train.trainer.train (the itjax "
                    "CLI gives one); pass evaluator=itjax.eval.training.TrainingEval, or set EVAL_MIXTURES=None")


def _prepare_model_dir(s: TrainSettings) -> tuple[str, seqio.Vocabulary]:
  """(MODEL_DIR with model_config.json and the tokenizer files, the run's vocabulary).

  The tokenizer: gin's vocabulary.path, else the one the initial checkpoint was trained or converted with.
  """
  model_dir = os.path.abspath(s.model_dir)
  make_dirs(model_dir, "MODEL_DIR")
  init_dir = find_model_dir(s.initial_checkpoint_path) if s.initial_checkpoint_path else None
  path = core_vocabulary.tokenizer_path(model_dir_tokenizer(init_dir) if init_dir else None)
  vocabulary = load_vocabulary(path)
  check_vocabulary_fits(vocabulary, s.model_config.vocab_size, "MODEL", getattr(s.model_config, "eos_id", None))
  if jax.process_index() == 0:
    save_model_config(model_dir, s.model_config)
    if path:  # eval/infer/export of this MODEL_DIR find the tokenizer beside the checkpoints
      main = load_tokenizer(path).path
      copy_tokenizer_files(os.path.dirname(main), model_dir, main)
  return model_dir, vocabulary


def _run(s: TrainSettings, evaluator: EvaluatorFactory | None, evaluate_at_end: bool, preempt: Preemption) -> dict:
  _check(s, evaluator, evaluate_at_end)
  model_dir, vocabulary = _prepare_model_dir(s)
  b = build(s)
  ev = None
  if evaluator is not None and s.eval_mixtures:
    ev = evaluator(interface=b.interface, mesh=b.mesh, rules=b.rules, eval_mixtures=s.eval_mixtures,
                   task_feature_lengths=s.task_feature_lengths, model_dir=model_dir,
                   train_mixture=s.mixture_or_task_name, vocabulary=vocabulary)
    if s.checkpoints.best_metric:
      ev.check_metric(s.checkpoints.best_metric)
  state, shardings = b.trainable.create_state(b.optimizer, b.mesh, b.rules, jax.random.key(s.seed))
  c = s.checkpoints
  ckpt = Checkpointer(model_dir, period=c.period, keep=c.keep, best_metric=c.best_metric, best_mode=c.best_mode,
                      keep_best=c.keep_best)
  loop = None
  try:
    start = ckpt.latest_step()
    saved_shards, meta = None, {}
    if start is not None:
      state, meta = ckpt.restore(start, b.abstract_state)
      b = b.with_trainable(b.trainable.from_meta(meta, os.path.join(ckpt.directory, str(start))))
      start_batch, saved_shards = meta["data"]["batches"], meta["data"].get("shards")
      log.info("resumed from step %d (data position %d batches)", start, start_batch)
      if (saved := meta.get("topology")) and saved != _topology(b.mesh):
        log.warning("resuming on another topology: step %d was saved on %s, this run has %s (the state is "
                    "resharded on load; the data stream is unchanged)", start, _describe(saved),
                    _describe(_topology(b.mesh)))
    else:
      start, start_batch = 0, 0
      state = b.trainable.start(state, shardings, b.optimizer, s.initial_checkpoint_path)
    data_shards = _resolve_data_shards(s.stream.data_shards, saved_shards, s.batch_size)
    step_dir = os.path.join(ckpt.directory, str(start)) if start else None
    resume, data_seed = _data_resume(s.stream.resume, step_dir, meta, data_shards, s.seed)
    frozen = b.load_frozen()
    if jax.process_index() == 0:
      write_model_info(os.path.join(model_dir, "model-info.txt"),
                       b.trainable.info_groups(b.optimizer, state, shardings, frozen.get("base"), b.mesh, b.rules),
                       b.trainable.info_header)

    stream_stats = StreamStats()
    index = None
    if s.stream.decontaminate:
      splits = ev.splits()
      index = eval_index(list(s.eval_mixtures.values()), splits)
      log.info("decontaminating against %d 13-grams of %s (%s)", len(index), sorted(s.eval_mixtures.values()),
               "/".join(splits))
    batches = host_batches(s.mixture_or_task_name, s.task_feature_lengths, s.batch_size, seed=data_seed,
                           data_shards=data_shards, start_batch=start_batch if resume == "replay" else 0,
                           layout=b.interface.features, stream=s.stream, vocabulary=vocabulary,
                           decontaminate=index, stats=stream_stats, truncation=run_truncation(),
                           pairs=PREFERENCE_IDS in s.objective.features(b.interface.features))
    if resume == "restore":
      t0 = time.time()
      batches.restore(lambda name: read_blob(step_dir, name), blob_names(step_dir), f"{step_dir}/data")
      log.info("data stream restored in %.1f s", time.time() - t0)
    elif resume == "fresh":  # a new stream, but the counts go on
      stream_stats.carry(saved_counts(lambda name: read_blob(step_dir, name), jax.process_index(),
                                      jax.process_count(), blob_names(step_dir)))
    loop = Loop(model_dir=model_dir, ckpt=ckpt, writer=MetricsWriter(model_dir, s.train_steps, start),
                stream_stats=stream_stats, data_state=batches.state, data_seed=data_seed,
                start=start, start_batch=start_batch, seed=s.seed,
                data_shards=data_shards, meta={**b.trainable.checkpoint_meta(), "topology": _topology(b.mesh)},
                num_params=int(perf.count_params((state.params, frozen)) * b.interface.active_param_fraction),
                peak_flops=s.peak_flops_per_device or perf.known_peak_flops(jax.devices()[0].device_kind))
    val = None
    if s.validation_split is not None:
      val = Validation(s.objective, b.interface, validation_batches(
          s.mixture_or_task_name, s.task_feature_lengths, s.batch_size, s.validation_split, b.interface.features,
          vocabulary, s.objective), b.batch_sharding)
      if start == 0:
        _validate(val, b, state, frozen, loop, 0)
    step, state = _steps(s, b, state, frozen, batches, loop, ev, preempt, start, val)
    stream_stats.log()
    ckpt.wait()
    if c.best_metric:
      log.info("best checkpoint by %s: step %s", c.best_metric, ckpt.best_step())
  finally:
    if loop is not None:
      loop.writer.close()
    ckpt.close()

  write_operative_config(model_dir)
  if ev is not None and evaluate_at_end and not preempt.requested and step >= s.train_steps:
    with jax.set_mesh(b.mesh), nn.logical_axis_rules(b.rules):
      init = b.trainable.baseline_params(frozen.get("base"), shardings, b.mesh, b.rules, jax.random.key(s.seed))
    ev.final({"init": init, f"step_{step}": b.trainable.full_params(state.params, frozen.get("base"))}, step)
  preempted = step < s.train_steps
  return {"step": step, **loop.metrics, "preempted": preempted,
          "exit_status": s.preempted_exit_code if preempted else 0}


def _topology(mesh: Any) -> dict:
  """What a checkpoint records of the run that saved it: its mesh, devices and processes."""
  return {"mesh": dict(zip(mesh.axis_names, (int(n) for n in mesh.devices.shape), strict=True)),
          "devices": jax.device_count(), "processes": jax.process_count()}


def _describe(topology: dict) -> str:
  mesh = " x ".join(f"{k}={v}" for k, v in topology.get("mesh", {}).items())
  return f"mesh {mesh} ({topology.get('devices')} devices, {topology.get('processes')} processes)"


def _validate(val: Validation, b: Built, state: Any, frozen: dict, loop: Loop, step: int) -> None:
  t0 = time.time()
  with jax.set_mesh(b.mesh), nn.logical_axis_rules(b.rules):
    m = val(b.trainable.full_params(state.params, frozen.get("base")), frozen)
  loop.write_eval(step, {f"validation/{k}": v for k, v in m.items()}, time.time() - t0)
  shown = ", ".join(f"{k}={m[k]:.4g}" for k in ("accuracy", "margin", "reward", "kl", "loss") if k in m)
  log.info("validation at step %d (%s): %s", step, b.settings.validation_split, shown)


def _steps(s: TrainSettings, b: Built, state: Any, frozen: dict, batches: Iterator, loop: Loop,
           ev: Evaluator | None, preempt: Preemption, start: int, val: Validation | None = None) -> tuple[int, Any]:
  """Steps from `start` to train_steps (or a preemption), logging, evaluating and checkpointing on the way;
  returns where it stopped (step, state)."""
  step = start
  best = bool(s.checkpoints.best_metric)
  with jax.set_mesh(b.mesh), nn.logical_axis_rules(b.rules):
    while step < s.train_steps and not preempt.should_stop(step):
      t0 = time.perf_counter()
      local = next(batches)  # blocks only when the stream's prefetch has not kept up with the step
      waited = time.perf_counter() - t0
      tokens = float(sum(np.sum(local[k] > 0) for k in ("encoder_input_tokens", "decoder_target_tokens")
                         if k in local)) * jax.process_count()
      state, m = b.step_fn(state, global_batch(local, b.batch_sharding), frozen)
      step += 1
      loop.stepped(step, m, tokens, waited)
      if step == start + 1:
        write_operative_config(loop.model_dir)
      if step % s.log_every == 0 or step == s.train_steps:
        loop.log()
      if val is not None and (step == s.train_steps or (s.eval_period and step % s.eval_period == 0)):
        _validate(val, b, state, frozen, loop, step)
      eval_metrics = None
      if ev is not None and s.eval_period and (step % s.eval_period == 0 or step == s.train_steps):
        loop.verify()
        t0 = time.time()
        eval_metrics = ev.evaluate(step, b.trainable.full_params(state.params, frozen.get("base")))
        loop.write_eval(step, eval_metrics, time.time() - t0)
      loop.checkpoint(step, state, force=eval_metrics is not None and best, metrics=eval_metrics)
    loop.log()
    loop.checkpoint(step, state, force=True)
    if step < s.train_steps:
      loop.ckpt.wait()
      log.warning("SIGTERM: saved step %d of %d; the run is incomplete: run the same command to resume "
                  "(exit status %d)", step, s.train_steps, s.preempted_exit_code)
  return step, state
