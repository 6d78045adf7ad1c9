"""What a training run is, as small frozen dataclasses built by gin (and checked as they are built).

`train.*` holds T5X's macros (`train.model_dir = %MODEL_DIR`, ...) and the run-level knobs; the
data stream, checkpointing and the objective have their own settings:

    train.model_dir, mixture_or_task_name, task_feature_lengths, train_steps, batch_size, model_config,
          seed, initial_checkpoint_path, eval_mixtures, eval_period, log_every, num_microbatches,
          peft, objective (default @sft()), peak_flops_per_device, preempted_exit_code
    stream_settings.pack, packer, dedup, decontaminate, data_shards
    checkpoint_settings.period, keep, best_metric, best_mode, keep_best
    sft.z_loss, label_smoothing, loss_normalizing_factor

`itjax train` and `itjax compile` read the same `train_settings()`; neither re-reads gin itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gin

from itjax.errors import UserError, check_int
from itjax.models.features import PACKERS
from itjax.models.peft_hooks import PeftConfig
from itjax.peft.method import check_peft
from itjax.train.objectives.base import Objective
from itjax.train.objectives.cross_entropy import CrossEntropy

RESUME_POLICIES = ("restore", "replay", "fresh")


@gin.configurable("stream_settings")
@dataclasses.dataclass(frozen=True)
class StreamSettings:
  """The training data stream.

  pack: pack examples into rows; packer: "best_fit" (default; about 96% non-padding at the offline
    default) or "seqio" (seqio's greedy packer).
  dedup: drop normalized-text duplicates per task and pass (itjax.data.dedup); counted.
  decontaminate: drop training examples that share a 13-gram with the evaluated splits of
    EVAL_MIXTURES (itjax.data.quality); counted.
  data_shards: how many pieces each global batch is read in (default: the process count, or the
    resumed checkpoint's); each process reads data_shards / process_count of them.
  resume: how a resumed run finds its place in the data. "restore" (default): each data shard's saved
    iterator state, at a cost that does not grow with the position (itjax.data.stream_state); "replay":
    re-read every batch already trained on (the cost grows with the position; for checkpoints saved
    without data state); "fresh": a new stream, seeded by the seed and the step (nothing repeats exactly,
    but within each task's current pass examples may be seen twice or not at all). Where "restore" cannot
    continue exactly (the saved data shards cannot be read by this many processes), the run uses "fresh"
    and says so.
  """

  pack: bool = True
  packer: str = "best_fit"
  dedup: bool = False
  decontaminate: bool = False
  data_shards: int | None = None
  resume: str = "restore"

  def __post_init__(self):
    if self.packer not in PACKERS:
      raise UserError(f"unknown packer {self.packer!r} (choose from {', '.join(PACKERS)})")
    if self.resume not in RESUME_POLICIES:
      raise UserError(f"stream_settings.resume={self.resume!r}: choose from {', '.join(RESUME_POLICIES)}")
    if self.data_shards is not None:
      check_int("stream_settings.data_shards", self.data_shards, 1)


@gin.configurable("checkpoint_settings")
@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
  """Orbax checkpoints in MODEL_DIR/checkpoints/: every `period` steps, the `keep` latest (None: all).

  best_metric: "SET/METRIC" (e.g. "held-out/exact_match"): also keep the `keep_best` best evaluated
  checkpoints by it ("max" or "min" `best_mode`).
  """

  period: int = 100
  keep: int | None = 3
  best_metric: str | None = None
  best_mode: str = "max"
  keep_best: int = 1

  def __post_init__(self):
    check_int("checkpoint_settings.period", self.period, 1)
    if self.keep is not None:
      check_int("checkpoint_settings.keep", self.keep, 1)
    if self.best_mode not in ("max", "min"):
      raise UserError(f"checkpoint_settings.best_mode={self.best_mode!r}: expected max or min")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """A whole training run (see `train_settings` for the fields)."""

  model_dir: str
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  train_steps: int
  batch_size: int
  model_config: Any
  seed: int = 0
  initial_checkpoint_path: str | None = None
  eval_mixtures: Mapping[str, str] | None = None
  eval_period: int | None = None
  validation_split: str | None = None
  log_every: int = 10
  num_microbatches: int = 1
  peak_flops_per_device: float | None = None
  preempted_exit_code: int = 75
  objective: Objective = dataclasses.field(default_factory=CrossEntropy)
  stream: StreamSettings = dataclasses.field(default_factory=StreamSettings)
  checkpoints: CheckpointSettings = dataclasses.field(default_factory=CheckpointSettings)

  def __post_init__(self):
    check_int("train.train_steps", self.train_steps, 0)
    check_int("train.batch_size", self.batch_size, 1)
    check_int("train.log_every", self.log_every, 1)
    check_int("train.num_microbatches", self.num_microbatches, 1)
    check_int("train.preempted_exit_code", self.preempted_exit_code, 3, 255)
    if self.eval_period is not None:
      check_int("train.eval_period", self.eval_period, 1)
    lengths = self.task_feature_lengths
    if not isinstance(lengths, Mapping) or set(lengths) != {"inputs", "targets"}:
      raise UserError(f"TASK_FEATURE_LENGTHS={lengths!r}: expected {{'inputs': N, 'targets': M}}")
    for k, v in lengths.items():
      check_int(f"TASK_FEATURE_LENGTHS[{k!r}]", v, 1)
    if self.batch_size % self.num_microbatches:
      raise UserError(f"train.batch_size={self.batch_size} must divide by train.num_microbatches "
                      f"({self.num_microbatches})")
    if self.stream.decontaminate and not self.eval_mixtures:
      raise UserError("stream_settings.decontaminate=True needs train.eval_mixtures (EVAL_MIXTURES): the eval data to "
                      "decontaminate against")
    best = self.checkpoints.best_metric
    if best and (not self.eval_period or not self.eval_mixtures):
      raise UserError(f"checkpoint_settings.best_metric={best!r} needs train.eval_period and EVAL_MIXTURES")
    if best and best.partition("/")[0] not in self.eval_mixtures:
      raise UserError(f"checkpoint_settings.best_metric={best!r}: expected SET/METRIC with SET one of "
                      f"{sorted(self.eval_mixtures)}")


@gin.configurable("train")
def train_settings(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
                   task_feature_lengths: Mapping[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
                   batch_size: int = gin.REQUIRED, model_config: Any = gin.REQUIRED, seed: int = 0,
                   initial_checkpoint_path: str | None = None, eval_mixtures: Mapping[str, str] | None = None,
                   eval_period: int | None = None, log_every: int = 10, num_microbatches: int = 1,
                   peft: PeftConfig | None = None, objective: Objective | None = None,
                   peak_flops_per_device: float | None = None, preempted_exit_code: int = 75,
                   validation_split: str | None = None) -> TrainSettings:
  """The run gin describes (T5X's `train` macros; stream, checkpoint and objective settings beside it).

  model_config: a `DecoderConfig` (decoder-only, PrefixLM features) or a `T5Config` (encoder-decoder,
    EncDec features: TASK_FEATURE_LENGTHS' inputs and targets are the encoder and decoder lengths);
    any family's config. A T5 config's dropout_rate applies in training steps (never in evaluation).
  eval_period: evaluate the current params on `eval_mixtures` every this many steps (and at the end),
    into MODEL_DIR/eval/step_<n>/, logging `eval/SET/METRIC` scalars.
  validation_split: the objective's held-out metrics on this split of the training tasks (SFT's loss, DPO's and
    a reward model's pair accuracy and margin, an RL objective's reward), at the start, every `eval_period`
    steps and at the end (`eval/validation/METRIC`; itjax.train.validation).
  peft: parameter-efficient tuning (`@lora()`, `@prefix_tuning()`, `@adapters()`; see itjax.peft): only
    the method's variables train and are checkpointed; the frozen base comes from INITIAL_CHECKPOINT_PATH
    (else a seed-`seed` initialization) and each checkpoint records where, for resume, eval and export.
  objective: what the step minimizes (default `@sft()`, token cross-entropy).
  peak_flops_per_device: for the `mfu` metric; default: known TPU/GPU peaks, no MFU on CPU.
  preempted_exit_code: the exit status of `itjax train` when SIGTERM stopped it before TRAIN_STEPS, after
    saving (default 75, EX_TEMPFAIL: "try again"), so that a scheduler or a shell loop requeues it; a
    finished run exits 0, a user error 2. Must be 3..255.
  """
  peft = peft if peft is not None else getattr(model_config, "peft", None)  # DecoderConfig.peft = @lora() too
  if peft is not None:
    check_peft(model_config, peft)  # a method whose LoRA targets exist in this model
    model_config = dataclasses.replace(model_config, peft=peft)
  return TrainSettings(
      model_dir=model_dir, mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
      train_steps=train_steps, batch_size=batch_size, model_config=model_config, seed=seed,
      initial_checkpoint_path=initial_checkpoint_path, eval_mixtures=eval_mixtures, eval_period=eval_period,
      log_every=log_every, num_microbatches=num_microbatches, peak_flops_per_device=peak_flops_per_device,
      preempted_exit_code=preempted_exit_code, validation_split=validation_split,
      objective=objective if objective is not None else CrossEntropy(), stream=StreamSettings(),
      checkpoints=CheckpointSettings())
