"""How evaluation runs (`eval_settings.*` in gin): a frozen dataclass, importable without TensorFlow."""

from __future__ import annotations

import dataclasses

import gin

from itjax.errors import check_int

EVAL_SPLIT = "validation"


@gin.configurable("eval_settings")
@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How much to evaluate and how.

  batch_size: rows per decode/scoring batch; max_new_tokens: generation budget;
  max_examples_per_task: cap on source examples per task (each rendered with every template).
  split: the split whose scores are reported; selection_split: the dev split on which each dataset's
    best template is chosen (FLAN's protocol: e.g. split="test", selection_split="validation");
    None chooses it on `split` itself (reported as an oracle choice).
  decontamination_examples_per_task: training examples per task scanned for 13-gram overlap with each
    eval set when the training mixture is known (counts go into the report); None or 0: no scan.
  """

  batch_size: int = 64
  max_new_tokens: int = 32
  max_examples_per_task: int | None = None
  split: str = EVAL_SPLIT
  selection_split: str | None = None
  decontamination_examples_per_task: int | None = 200

  def __post_init__(self):
    for name in ("batch_size", "max_new_tokens"):
      check_int(f"eval_settings.{name}", getattr(self, name), 1)
    if self.max_examples_per_task is not None:
      check_int("eval_settings.max_examples_per_task", self.max_examples_per_task, 1)
    if self.decontamination_examples_per_task is not None:  # 0: no scan
      check_int("eval_settings.decontamination_examples_per_task", self.decontamination_examples_per_task, 0)

  @property
  def evaluated_splits(self) -> tuple[str, ...]:
    """The splits an evaluation reads: the reported one, then the selection one."""
    return tuple(s for s in dict.fromkeys((self.split, self.selection_split)) if s)
