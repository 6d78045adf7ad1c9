"""The training loop: sharded state, jitted step, checkpoints, summaries, evals.

`train` is the gin entry point of `itjax train`. It resumes from the latest
complete checkpoint in MODEL_DIR if there is one (model, optimizer, step and
data position; onto whatever mesh this run has), else starts at step 0 from
INITIAL_CHECKPOINT_PATH's params or from scratch.

Robustness: a run killed at any point and restarted continues with exactly the
losses of an uninterrupted one (the data stream is a function of the seed,
`data_shards` and the number of batches consumed). SIGTERM (a preemption
notice; on several hosts JAX's preemption service agrees on the step) saves
the current step and returns normally. A non-finite loss, gradient or state
stops the run with `NonFiniteError` naming the step, before any checkpoint of
that state is written.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping

import flax.linen as nn
import gin
import jax
import numpy as np

from itjax.data import vocab
from itjax.data.feature_converters import check_packer
from itjax.data.pipeline import numpy_batches, train_dataset
from itjax.data.quality import NgramIndex, eval_index
from itjax.data.registry import require_task
from itjax.data.stream_stats import StreamStats
from itjax.errors import UserError
from itjax.eval.evaluator import evaluated_splits, run_eval
from itjax.eval.report import METRIC_TITLES
from itjax.models.config_io import ModelConfig, build_model, find_model_dir, save_model_config
from itjax.models.interface import interface_for
from itjax.models.peft_hooks import PeftConfig
from itjax.peft import state as peft_state
from itjax.peft.method import check_peft, combine, with_peft
from itjax.train import partitioning, perf
from itjax.train.checkpoints import Checkpointer, restore_params
from itjax.train.distributed import initialize_distributed
from itjax.train.model_info import write_model_info
from itjax.train.optim import make_optimizer
from itjax.train.state import TrainState, abstract_state, create_train_state, init_params
from itjax.train.step import check_loss_normalizing_factor, jit_train_step
from itjax.train.summaries import MetricsWriter

log = logging.getLogger("itjax")


class NonFiniteError(FloatingPointError, UserError):
  """The loss, gradients or updated state became NaN/inf; nothing from that step on was checkpointed."""


class _Preemption:
  """SIGTERM -> stop at an agreed step: a flag with one process, JAX's preemption service with several."""

  def __init__(self, multiprocess: bool):
    self.multiprocess = multiprocess
    self.requested = False
    self._old = None

  def __enter__(self):
    if not self.multiprocess:  # JAX's own SIGTERM notifier must keep the signal with several processes
      try:
        self._old = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        self._old = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Called once per step, at the same steps on every process."""
    if self.multiprocess and not self.requested:
      from jax.experimental import multihost_utils

      try:
        self.requested = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # preemption service disabled (jax_enable_preemption_service=False)
        pass
    return self.requested

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _global_batch(local: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each host's piece (its rows of the batch axis)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def host_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                 seed: int, data_shards: int, pack: bool, start_batch: int,
                 encoder_decoder: bool = False, packer: str = "best_fit", dedup: bool = False,
                 decontaminate: NgramIndex | None = None, stats: StreamStats | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of each global batch: its `data_shards / process_count` shards, concatenated.

  The global batch is shards 0..data_shards-1 stacked (batch_size / data_shards rows each), whatever
  the number of processes, so runs with equal `data_shards` see the same batches on 1 or N hosts.
  """
  per_host = data_shards // jax.process_count()
  streams = [numpy_batches(train_dataset(
      mixture_or_task_name, task_feature_lengths, batch_size // data_shards, seed=seed,
      shard_index=jax.process_index() * per_host + j, num_shards=data_shards, pack=pack, start_batch=start_batch,
      encoder_decoder=encoder_decoder, packer=packer, dedup=dedup, decontaminate=decontaminate, stats=stats))
      for j in range(per_host)]
  while True:
    parts = [next(s) for s in streams]
    yield parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _resolve_data_shards(requested: int | None, saved: int | None, batch_size: int) -> int:
  """The data shard count: as set, else the checkpoint's (so resuming on more hosts keeps the stream)."""
  n = jax.process_count()
  if requested is not None:
    shards = requested
    if saved and saved != requested:
      log.warning("train.data_shards=%d but the checkpoint read %d shards: the data order changes", requested, saved)
  elif saved and saved % n == 0 and batch_size % saved == 0:
    shards = saved
  else:
    shards = n
    if saved and saved != n:
      log.warning("checkpoint read %d data shards; %d processes cannot: reading %d (the data order changes)",
                  saved, n, n)
  if shards < 1 or shards % n or batch_size % shards:
    raise UserError(f"train.data_shards={shards} must be a multiple of the process count ({n}) and divide "
                    f"train.batch_size={batch_size}")
  return shards


def _broadcast_json(obj):
  """Process 0's JSON-able value on every process."""
  if jax.process_count() == 1:
    return obj
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buf = np.zeros(n, np.uint8)
  buf[:data.size] = data
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode())


def _check_best_metric(name: str | None, eval_mixtures: Mapping[str, str] | None, eval_period: int | None) -> None:
  if not name:
    return
  set_name, _, metric = name.partition("/")
  if not eval_period or not eval_mixtures:
    raise UserError(f"train.best_checkpoint_metric={name!r} needs train.eval_period and EVAL_MIXTURES")
  if set_name not in eval_mixtures or metric not in METRIC_TITLES:
    raise UserError(f"train.best_checkpoint_metric={name!r}: expected SET/METRIC with SET one of "
                    f"{sorted(eval_mixtures)} and METRIC one of {sorted(METRIC_TITLES)}")


def write_operative_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.operative_config_str())


@gin.configurable(denylist=["evaluate_at_end"])
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, model_config: ModelConfig = gin.REQUIRED, seed: int = 0,
          pack: bool = True, log_every: int = 10, checkpoint_period: int = 100, keep_checkpoints: int | None = 3,
          num_microbatches: int = 1, z_loss: float = 0.0, label_smoothing: float = 0.0,
          loss_normalizing_factor: str | float = "num_real_target_tokens", data_shards: int | None = None,
          initial_checkpoint_path: str | None = None, eval_mixtures: Mapping[str, str] | None = None,
          eval_period: int | None = None, best_checkpoint_metric: str | None = None,
          best_checkpoint_mode: str = "max", keep_best_checkpoints: int = 1,
          peak_flops_per_device: float | None = None, peft: PeftConfig | None = None, packer: str = "best_fit",
          dedup: bool = False, decontaminate: bool = False, evaluate_at_end: bool = True) -> dict:
  """Trains until `train_steps` (total, counting resumed steps); returns the last metrics.

  model_config: a `DecoderConfig` (decoder-only, PrefixLM features) or a `T5Config` (encoder-decoder,
    EncDec features: TASK_FEATURE_LENGTHS' inputs and targets are the encoder and decoder lengths).
    A T5 config's dropout_rate applies in training steps (never in evaluation).

  eval_period: evaluate the current params on `eval_mixtures` every this many steps (and at the end),
    into MODEL_DIR/eval/step_<n>/, logging `eval/SET/METRIC` scalars.
  best_checkpoint_metric: "SET/METRIC" (e.g. "held-out/exact_match"): also keep the
    `keep_best_checkpoints` best evaluated checkpoints by it ("max" or "min" `best_checkpoint_mode`).
  data_shards: how many pieces each global batch is read in (default: the process count, or the resumed
    checkpoint's); each process reads data_shards / process_count of them.
  peak_flops_per_device: for the `mfu` metric; default: known TPU/GPU peaks, no MFU on CPU.
  packer: "best_fit" (default; about 96% non-padding at the offline default) or "seqio" (seqio's greedy
    packer), when `pack`.
  dedup: drop normalized-text duplicates per task and pass (itjax.data.dedup); counted.
  decontaminate: drop training examples that share a 13-gram with the evaluated splits of
    `eval_mixtures` (itjax.data.quality); counted. What the stream drops, cuts and pads is logged
    and written to metrics.jsonl as `data/...` scalars (process 0's shards, with several processes).
  peft: parameter-efficient tuning (`@lora()`, `@prefix_tuning()`, `@adapters()`; see itjax.peft): only
    the method's variables train and are checkpointed; the frozen base comes from INITIAL_CHECKPOINT_PATH
    (else a seed-`seed` initialization) and each checkpoint records where, for resume, eval and export.
  """
  args = dict(locals())
  with _Preemption(multiprocess=initialize_distributed()) as preempt:
    return _train(**args, preempt=preempt)


def _train(*, model_dir, mixture_or_task_name, task_feature_lengths, train_steps, batch_size, model_config, seed,
           pack, log_every, checkpoint_period, keep_checkpoints, num_microbatches, z_loss, label_smoothing,
           loss_normalizing_factor, data_shards, initial_checkpoint_path, eval_mixtures, eval_period,
           best_checkpoint_metric, best_checkpoint_mode, keep_best_checkpoints, peak_flops_per_device, peft,
           packer, dedup, decontaminate, evaluate_at_end, preempt: _Preemption) -> dict:
  require_task(mixture_or_task_name)
  for name in (eval_mixtures or {}).values():
    require_task(name)
  if batch_size % jax.process_count() or batch_size % max(num_microbatches, 1):
    raise UserError(f"train.batch_size={batch_size} must divide by the process count ({jax.process_count()}) "
                    f"and train.num_microbatches ({num_microbatches})")
  loss_normalizing_factor = check_loss_normalizing_factor(loss_normalizing_factor)
  check_packer(packer)
  if decontaminate and not eval_mixtures:
    raise UserError("train.decontaminate=True needs train.eval_mixtures (EVAL_MIXTURES): the eval data to "
                    "decontaminate against")
  _check_best_metric(best_checkpoint_metric, eval_mixtures, eval_period)
  peft = peft if peft is not None else getattr(model_config, "peft", None)  # DecoderConfig.peft = @lora() too
  if peft is not None:  # model_config.json then records the method: eval/infer/convert rebuild the PEFT model
    check_peft(model_config, peft)
    model_config = with_peft(model_config, peft)
  model_dir = os.path.abspath(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  # The tokenizer: gin's vocabulary.path, else the one the initial checkpoint was converted with.
  vocab.use_model_dir_vocabulary(find_model_dir(initial_checkpoint_path) if initial_checkpoint_path else None)
  vocab.check_vocabulary_fits(model_config.vocab_size, "MODEL", getattr(model_config, "eos_id", None))
  if jax.process_index() == 0:
    save_model_config(model_dir, model_config)
    if vocab.active_path():  # eval/infer/export of this MODEL_DIR find the tokenizer beside the checkpoints
      vocab.copy_tokenizer_files(os.path.dirname(vocab.active_path()), model_dir, vocab.active_path())

  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  model = build_model(model_config)
  iface = interface_for(model)
  optimizer, schedule = make_optimizer()
  example = iface.example_inputs(task_feature_lengths)
  if peft is None:
    state, shardings = create_train_state(model, optimizer, mesh, rules, jax.random.key(seed), example)
  else:  # the trainable PEFT variables only; the frozen base is loaded once its reference is known
    state, shardings = peft_state.create_state(model_config, optimizer, mesh, rules, jax.random.key(seed))
  base_ref = peft_state.base_reference(initial_checkpoint_path, seed)
  ckpt = Checkpointer(model_dir, period=checkpoint_period, keep=keep_checkpoints,
                      best_metric=best_checkpoint_metric, best_mode=best_checkpoint_mode,
                      keep_best=keep_best_checkpoints)
  loop = None
  try:
    start = ckpt.latest_step()
    saved_shards = None
    if start is not None:
      abstract = (abstract_state(model, optimizer, example, shardings) if peft is None
                  else peft_state.abstract_state(model_config, optimizer, shardings))
      state, meta = ckpt.restore(start, abstract)
      base_ref = meta.get(peft_state.BASE_META, base_ref)  # PEFT: the base this run started from
      start_batch, saved_shards = meta["data"]["batches"], meta["data"].get("shards")
      log.info("resumed from step %d (data position %d batches)", start, start_batch)
    else:
      start, start_batch = 0, 0
      if initial_checkpoint_path and peft is None:
        params = restore_params(initial_checkpoint_path, jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state.params, shardings.params))
        state = state.replace(params=params,
                              opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params))
        log.info("fine-tuning from %s", initial_checkpoint_path)
    data_shards = _resolve_data_shards(data_shards, saved_shards, batch_size)
    # PEFT: the frozen base, a separate (sharded, never donated) argument of the step; else nothing.
    frozen_shardings = () if peft is None else (peft_state.base_shardings(model_config, mesh, rules),)
    frozen = () if peft is None else (peft_state.load_base(model_config, base_ref, mesh, rules),)
    full_params = (lambda p: p) if peft is None else functools.partial(combine, frozen[0])
    if jax.process_index() == 0 and peft is None:
      write_model_info(os.path.join(model_dir, "model-info.txt"), state, shardings, model, optimizer, example)
    elif jax.process_index() == 0:
      peft_state.write_model_info(os.path.join(model_dir, "model-info.txt"), model_config, optimizer, state,
                                  shardings, frozen[0], frozen_shardings[0])

    batch_sharding = partitioning.batch_sharding(mesh, rules)
    step_fn = jit_train_step(
        model, optimizer, schedule, shardings, batch_sharding, num_microbatches=num_microbatches, z_loss=z_loss,
        label_smoothing=label_smoothing, loss_normalizing_factor=loss_normalizing_factor,
        dropout_seed=seed if (getattr(model_config, "dropout_rate", 0.0) > 0
                              or (peft is not None and peft.lora_dropout > 0)) else None,
        frozen_shardings=frozen_shardings)
    stream_stats = StreamStats()
    index = None
    if decontaminate:
      splits = evaluated_splits()
      index = eval_index(list(eval_mixtures.values()), splits)
      log.info("decontaminating against %d 13-grams of %s (%s)", len(index), sorted(eval_mixtures.values()),
               "/".join(splits))
    batches = host_batches(mixture_or_task_name, task_feature_lengths, batch_size, seed=seed,
                           data_shards=data_shards, pack=pack, start_batch=start_batch,
                           encoder_decoder=iface.encoder_decoder, packer=packer, dedup=dedup,
                           decontaminate=index, stats=stream_stats)
    loop = _Loop(model_dir=model_dir, ckpt=ckpt, writer=MetricsWriter(model_dir, train_steps, start),
                 stream_stats=stream_stats,
                 start=start, start_batch=start_batch, seed=seed, data_shards=data_shards,
                 meta={} if peft is None else {peft_state.BASE_META: base_ref},
                 # Enc-dec: each token passes through about half the parameters (its stack's).
                 num_params=perf.count_params((state.params, frozen)) // (2 if iface.encoder_decoder else 1),
                 peak_flops=peak_flops_per_device or perf.known_peak_flops(jax.devices()[0].device_kind))
    evaluate = None
    if eval_period and eval_mixtures:
      def evaluate(step: int, params) -> dict[str, float]:
        name = f"step_{step}"
        summary, _ = run_eval(model, {name: params}, eval_mixtures, task_feature_lengths,
                              os.path.join(model_dir, "eval", name), mesh=mesh, rules=rules,
                              title=f"{mixture_or_task_name}: zero-shot evaluation at step {step}")
        return _broadcast_json({f"{s}/{m}": v[name] for s, res in summary.items()
                                for m, v in res["overall"].items() if v.get(name) is not None})

    step = start
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      while step < train_steps and not preempt.should_stop(step):
        local = next(batches)
        tokens = float(sum(np.sum(local[k] > 0) for k in ("encoder_input_tokens", "decoder_target_tokens")
                           if k in local)) * jax.process_count()
        state, m = step_fn(state, _global_batch(local, batch_sharding), *frozen)
        step += 1
        loop.stepped(step, m, tokens)
        if step == start + 1:
          write_operative_config(model_dir)
        if step % log_every == 0 or step == train_steps:
          loop.log()
        eval_metrics = None
        if evaluate is not None and (step % eval_period == 0 or step == train_steps):
          loop.verify()
          t0 = time.time()
          eval_metrics = evaluate(step, full_params(state.params))
          loop.write_eval(step, eval_metrics, time.time() - t0)
        loop.checkpoint(step, state, force=eval_metrics is not None and bool(best_checkpoint_metric),
                        metrics=eval_metrics)
      if step < train_steps:
        log.warning("SIGTERM: saving step %d and stopping", step)
      loop.log()
      loop.checkpoint(step, state, force=True)
    stream_stats.log()
    ckpt.wait()
    if best_checkpoint_metric:
      log.info("best checkpoint by %s: step %s", best_checkpoint_metric, ckpt.best_step())
  finally:
    if loop is not None:
      loop.writer.close()
    ckpt.close()

  write_operative_config(model_dir)
  if evaluate_at_end and eval_mixtures and not preempt.requested and step >= train_steps:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      init = (init_params(model, jax.random.key(seed), example, shardings.params) if peft is None
              else peft_state.initial_params(model_config, frozen[0], shardings, jax.random.key(seed)))
    run_eval(model, {"init": init, f"step_{step}": full_params(state.params)}, eval_mixtures,
             task_feature_lengths, os.path.join(model_dir, "eval", "heldout"), mesh=mesh, rules=rules,
             title=f"{mixture_or_task_name}: zero-shot evaluation", train_mixture=mixture_or_task_name)
  return {"step": step, **loop.metrics}


class _Loop:
  """The loop's bookkeeping: metric windows, timing, the finiteness guard and checkpoint metadata."""

  def __init__(self, *, model_dir: str, ckpt: Checkpointer, writer: MetricsWriter, start: int, start_batch: int,
               seed: int, data_shards: int, num_params: int, peak_flops: float | None, meta: dict | None = None,
               stream_stats: StreamStats | None = None):
    self.model_dir, self.ckpt, self.writer = model_dir, ckpt, writer
    self.stream_stats = stream_stats
    self.meta = meta or {}  # extra checkpoint metadata (PEFT: the base reference)
    self.start, self.start_batch, self.seed, self.data_shards = start, start_batch, seed, data_shards
    self.num_params, self.peak_flops = num_params, peak_flops
    self.pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet logged
    self.verified = start  # every step <= this one had finite loss and state
    self.metrics: dict = {}
    self.t_start = time.time()
    self.window_t0, self.window_steps, self.window_tokens = self.t_start, 0, 0.0
    self.first_step_s: float | None = None

  def stepped(self, step: int, m: dict, tokens: float) -> None:
    self.pending.append((step, m))
    if step == self.start + 1:  # time compilation apart from steady-state steps
      jax.block_until_ready(m["loss"])
      self.first_step_s = time.time() - self.t_start
      self.window_t0 = time.time()
    else:
      self.window_steps += 1
      self.window_tokens += tokens

  def verify(self, fetched: list[tuple[int, dict]] | None = None) -> None:
    """Raises NonFiniteError for the first unverified step whose loss or state is not finite."""
    todo = [(s, m) for s, m in self.pending if s > self.verified]
    if fetched is None:
      fetched = jax.device_get([(s, {"finite": m["finite"], "loss": m["loss"]}) for s, m in todo])
    for s, m in fetched:
      if s <= self.verified:
        continue
      if not bool(m["finite"]):
        self.ckpt.wait()
        what = "loss" if not np.isfinite(m["loss"]) else "gradients or parameters"
        raise NonFiniteError(f"non-finite {what} at step {s} (loss {float(m['loss'])}); stopped. Last good "
                             f"checkpoint: step {self.ckpt.latest_step()} in {self.ckpt.directory}")
      self.verified = s

  def log(self) -> None:
    """Fetches the pending steps' metrics, checks them, writes their mean (and timing) as one record."""
    if not self.pending:
      return
    fetched = jax.device_get(self.pending)
    step = fetched[-1][0]
    keys = [k for k in fetched[-1][1] if k != "finite"]
    metrics = {k: float(np.mean([m[k] for _, m in fetched])) for k in keys}
    if self.window_steps:
      elapsed = time.time() - self.window_t0
      metrics.update(step_time_s=elapsed / self.window_steps, tokens_per_s=self.window_tokens / elapsed)
      mfu = perf.mfu(self.num_params, metrics["tokens_per_s"], self.peak_flops, jax.device_count())
      if mfu is not None:
        metrics["mfu"] = mfu
    if self.stream_stats is not None:
      metrics.update(self.stream_stats.scalars())
    if self.first_step_s is not None:
      metrics["first_step_s"] = self.first_step_s  # compilation included
      self.first_step_s = None
    self.pending = []
    self.window_t0, self.window_steps, self.window_tokens = time.time(), 0, 0.0
    self.writer.write(step, metrics)
    self.writer.advance(len(fetched))
    self.metrics = metrics
    self.verify(fetched)

  def write_eval(self, step: int, metrics: dict[str, float], seconds: float) -> None:
    self.writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()} | {"eval/seconds": seconds})
    self.window_t0 += seconds  # eval time is not step time

  def checkpoint(self, step: int, state: TrainState, force: bool = False,
                 metrics: dict[str, float] | None = None) -> None:
    if not force and step % self.ckpt.period:
      return
    self.verify()
    self.ckpt.save(step, state, {"data": {"batches": self.start_batch + step - self.start,
                                          "shards": self.data_shards}, "seed": self.seed, **self.meta},
                   force=force, metrics=metrics)
