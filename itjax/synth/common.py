"""What every `itjax data` pipeline shares: run settings, the output directory, the final report."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

from itjax.errors import UserError, make_dirs
from itjax.synth import finalize as fin
from itjax.synth.mixins import Mixin
from itjax.synth.progress import Journal, Progress
from itjax.synth.teacher import Teacher


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Settings of one pipeline run that are not the pipeline's own."""

  output_dir: str
  temperature: float = 0.7
  top_p: float = 1.0
  max_tokens: int = 512
  seed: int = 0
  max_consecutive_failures: int = 10
  decontaminate: tuple[str, ...] = ()  # eval tasks / mixtures whose 13-grams generated examples must not share
  mixins: tuple[Mixin, ...] = ()

  def __post_init__(self):
    if self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
      raise UserError(f"need --max_tokens >= 1, --temperature >= 0 and 0 < --top_p <= 1; got {self.max_tokens}, "
                      f"{self.temperature}, {self.top_p}")


class Run:
  """An output directory being filled: its journals, its progress file and the teacher."""

  def __init__(self, command: str, run: RunConfig, teacher: Teacher, settings: dict[str, Any]):
    self.command, self.cfg, self.teacher = command, run, teacher
    if os.path.exists(run.output_dir) and not os.path.isdir(run.output_dir):
      raise UserError(f"--output_dir {run.output_dir}: exists and is not a directory")
    make_dirs(run.output_dir, "the output directory")
    self.progress = Progress(run.output_dir, command, {**settings, "teacher": teacher.describe()},
                             live=lambda: {"teacher_requests": teacher.summary()})
    self.journals: list[Journal] = []
    self.started = time.time()

  def journal(self, name: str) -> Journal:
    j = Journal(os.path.join(self.cfg.output_dir, name))
    self.journals.append(j)
    return j

  def provenance(self, **fields: Any) -> dict[str, Any]:
    return {"method": self.command, "teacher": self.teacher.describe(), **fields}

  def sampling(self) -> dict[str, Any]:
    return {"max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature, "top_p": self.cfg.top_p}

  def finish(self, rows: Sequence[dict], stages: dict[str, Any], fmt: str = "alpaca") -> dict[str, Any]:
    """Dedup, decontaminate, mix in, write data.jsonl (`fmt`: alpaca or chat) + report.json; returns the report."""
    for j in self.journals:
      j.close()
    report = {"command": self.command, "output_dir": self.cfg.output_dir, "stages": stages,
              "teacher_requests": self.teacher.summary(), "seconds": round(time.time() - self.started, 1)}
    report = fin.finalize(self.cfg.output_dir, rows, report, mixins=self.cfg.mixins,
                          decontaminate=self.cfg.decontaminate, fmt=fmt)
    self.progress.save(finished=True, final=report["final"])
    return report
