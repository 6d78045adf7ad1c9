"""Evaluation during and at the end of `itjax train`: the evaluator the CLI gives the trainer.

Every `train.eval_period` steps the current params are evaluated on EVAL_MIXTURES into
MODEL_DIR/eval/step_<n>/ (their overall scores come back as `SET/METRIC` scalars, on every process);
after the last step, the untrained baseline and the last step go into MODEL_DIR/eval/heldout/ with
the decontamination counts of the training mixture.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from itjax.core.distributed import broadcast_json
from itjax.errors import UserError
from itjax.eval.evaluator import evaluated_splits, run_eval
from itjax.eval.report import METRIC_TITLES
from itjax.eval.settings import EvalSettings


class TrainingEval:
  """`itjax.train.trainer.Evaluator` over `run_eval`."""

  def __init__(self, *, interface: Any, mesh: Any, rules: Any, eval_mixtures: Mapping[str, str],
               task_feature_lengths: Mapping[str, int], model_dir: str, train_mixture: str, vocabulary: Any):
    self.interface, self.mesh, self.rules = interface, mesh, rules
    self.eval_mixtures, self.lengths = dict(eval_mixtures), dict(task_feature_lengths)
    self.model_dir, self.train_mixture, self.vocabulary = model_dir, train_mixture, vocabulary
    EvalSettings()  # gin's eval_settings are checked now, not after training

  def splits(self) -> tuple[str, ...]:
    return evaluated_splits()

  def check_metric(self, name: str) -> None:
    set_name, _, metric = name.partition("/")
    if set_name not in self.eval_mixtures or metric not in METRIC_TITLES:
      raise UserError(f"checkpoint_settings.best_metric={name!r}: expected SET/METRIC with SET one of "
                      f"{sorted(self.eval_mixtures)} and METRIC one of {sorted(METRIC_TITLES)}")

  def evaluate(self, step: int, params: Any) -> dict[str, float]:
    name = f"step_{step}"
    summary, _ = run_eval(self.interface, {name: params}, self.eval_mixtures, self.lengths,
                          os.path.join(self.model_dir, "eval", name), vocabulary=self.vocabulary, mesh=self.mesh,
                          rules=self.rules,
                          title=f"{self.train_mixture}: zero-shot evaluation at step {step}")
    return broadcast_json({f"{s}/{m}": v[name] for s, res in summary.items()
                           for m, v in res["overall"].items() if v.get(name) is not None})

  def final(self, params_by_name: Mapping[str, Any], step: int) -> None:
    run_eval(self.interface, dict(params_by_name), self.eval_mixtures, self.lengths,
             os.path.join(self.model_dir, "eval", "heldout"), vocabulary=self.vocabulary, mesh=self.mesh,
             rules=self.rules,
             title=f"{self.train_mixture}: zero-shot evaluation", train_mixture=self.train_mixture)
