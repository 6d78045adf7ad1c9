"""Trainer features on tiny runs: fine-tuning from INITIAL_CHECKPOINT_PATH, periodic eval with the best
checkpoint kept, and step time / tokens/s / MFU in the metrics."""

import json
import os

import jax
import numpy as np
import pytest
from train_runs import TINY, assert_trees_equal, checkpoint_state, train

from itjax import config
from itjax.core.checkpoints import complete_steps
from itjax.eval.training import TrainingEval
from itjax.train import trainer
from itjax.train.summaries import read_metrics


def test_initial_checkpoint_starts_at_step_0_with_its_params(reference, tmp_path):
  d = tmp_path / "finetune"
  assert train(d, "--gin.TRAIN_STEPS=0", f"--gin.INITIAL_CHECKPOINT_PATH='{reference}'") == 0
  assert complete_steps(d / "checkpoints") == [0]
  state, ref = checkpoint_state(d), checkpoint_state(reference)
  assert int(state["step"]) == 0
  assert_trees_equal(state["params"], ref["params"])
  # A fresh optimizer: Adam's moments start at zero.
  moments = [x for x in jax.tree_util.tree_leaves(state["opt_state"]) if np.asarray(x).ndim >= 1]
  assert moments and all(not np.asarray(x).any() for x in moments)


def test_periodic_eval_keeps_the_best_checkpoint(tmp_path):
  """Called through gin directly, to leave out the end-of-training eval (not a gin parameter)."""
  d = tmp_path / "run"
  config.parse([TINY], [f"MODEL_DIR='{d}'", "TRAIN_STEPS=4", "CHECKPOINT_PERIOD=1",
                        "EVAL_MIXTURES={'held-out': 'proc_color_nli_zs_opt'}", "train.eval_period=2",
                        "checkpoint_settings.best_metric='held-out/rank_accuracy'", "checkpoint_settings.keep=1"])
  assert trainer.train(evaluator=TrainingEval, evaluate_at_end=False)["step"] == 4
  assert not (d / "eval" / "heldout").exists()
  for step in (2, 4):
    report = json.loads((d / "eval" / f"step_{step}" / "report.json").read_text())
    assert report["checkpoints"] == [f"step_{step}"]
  records = read_metrics(d)
  scores = {s: records[s]["eval/held-out/rank_accuracy"] for s in (2, 4)}
  assert "eval/held-out/rank_accuracy" not in records[1] and "loss" in records[2]
  best = max(scores, key=lambda s: (scores[s], s))  # ties: the later step
  assert complete_steps(d / "checkpoints") == sorted({best, 4})
  assert os.path.isdir(d / "checkpoints" / "4" / "metrics")


def test_metrics_report_step_time_tokens_and_mfu(reference):
  records = read_metrics(reference)
  assert "first_step_s" in records[1] and "mfu" not in records[1]
  n_params = int((reference / "model-info.txt").read_text().split("total parameters: ")[1].split()[0]
                 .replace(",", ""))
  for r in list(records.values())[1:]:
    assert r["step_time_s"] > 0 and r["tokens_per_s"] > 0
    np.testing.assert_allclose(r["mfu"], 6 * n_params * r["tokens_per_s"] / (1e12 * 8), rtol=1e-6)


@pytest.mark.slow
def test_stream_counts_reach_the_metrics(reference, tmp_path):
  """Packing efficiency always; dedup and decontamination (against the eval sets) when switched on."""
  assert all(0.5 < r["data/packing_efficiency"] <= 1 for r in read_metrics(reference).values() if "loss" in r)
  assert not any("data/decontaminated" in r for r in read_metrics(reference).values())
  d = tmp_path / "clean"
  # Training on the task that is also the "seen" eval set: its test/validation 13-grams recur in train.
  # Called through gin directly, to leave out the end-of-training eval (not a gin parameter).
  config.parse([TINY], [f"MODEL_DIR='{d}'", "TRAIN_STEPS=2", "EVAL_MIXTURES={'seen': 'proc_add_zs_noopt'}",
                        "stream_settings.dedup=True", "stream_settings.decontaminate=True",
                        "eval_settings.split='test'", "eval_settings.selection_split='validation'"])
  assert trainer.train(evaluator=TrainingEval, evaluate_at_end=False)["step"] == 2
  last = read_metrics(d)[2]
  assert last["data/decontaminated"] > 0 and last["data/dedup_examples"] > 0
  assert "data/dedup_dropped" not in last or last["data/dedup_dropped"] < last["data/dedup_examples"]


def test_decontaminate_without_eval_sets_is_a_user_error(tmp_path, capsys):
  assert train(tmp_path / "x", "--gin.stream_settings.decontaminate=True") == 2
  assert "stream_settings.decontaminate=True needs train.eval_mixtures" in capsys.readouterr().err
