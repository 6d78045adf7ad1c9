"""The whole path on a tiny model: train, checkpoint, resume, evaluate, eval/infer/convert CLIs."""

import json
import os

import pytest

from itjax.cli import main

TINY = os.path.join(os.path.dirname(__file__), "tiny.gin")


def train(model_dir, *extra):
  assert main(["train", f"--gin_file={TINY}", f"--model_dir={model_dir}", *extra]) == 0


def metrics(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  d = tmp_path_factory.mktemp("run")
  train(d)
  return d


def test_train_writes_model_dir(trained, capsys):
  for name in ("config.gin", "model-info.txt", "model_config.json", "metrics.jsonl"):
    assert os.path.exists(trained / name), name
  assert sorted(os.listdir(trained / "checkpoints")) == ["3", "6"]
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(trained / "train"))
  steps = [m["step"] for m in metrics(trained)]
  assert steps == [1, 2, 3, 4, 5, 6]
  m = metrics(trained)[-1]
  assert {"loss", "accuracy", "grad_norm", "learning_rate", "tokens_per_s"} <= set(m)
  # The operative config records what ran, including values set on the command line.
  config = (trained / "config.gin").read_text()
  assert "TRAIN_STEPS = 6" in config and "DecoderConfig.emb_dim = 32" in config
  info = (trained / "model-info.txt").read_text()
  assert "params/embedding" in info and "logical=('vocab', 'embed')" in info


def test_eval_report_written_at_end(trained):
  report = json.loads((trained / "eval" / "heldout" / "report.json").read_text())
  assert report["checkpoints"] == ["init", "step_6"]
  assert set(report["sets"]) == {"held-out", "seen"}
  assert report["metrics"] == ["exact_match", "rank_accuracy", "rank_accuracy_norm"]
  held = report["sets"]["held-out"]
  assert [c["cluster"] for c in held["clusters"]] == ["nli"]
  # 2 examples x 3 templates, one row per template.
  assert [t["n"] for t in held["templates"]] == [2, 2, 2]
  # Rank classification applies to the options task only; it always picks one of the two options.
  assert report["sets"]["seen"]["overall"]["rank_accuracy"]["init"] is None
  md = (trained / "eval" / "heldout" / "report.md").read_text()
  assert "| held-out | nli | 1 |" in md and "## Per template" in md
  preds = [json.loads(line) for line in open(trained / "eval" / "heldout" / "predictions.jsonl")]
  assert len(preds) == 12 and set(preds[0]["outputs"]) == {"init", "step_6"}
  for name in ("clusters_exact_match.png", "clusters_rank_accuracy.png", "side_by_side.html"):
    assert (trained / "eval" / "heldout" / name).stat().st_size > 1000, name
  page = (trained / "eval" / "heldout" / "side_by_side.html").read_text()
  assert page.count("<tr>") == 12 + 2 and "<th>init</th>" in page
  nli = [p for p in preds if p["cluster"] == "nli"]
  assert all(p["outputs"]["init"]["option"] in ("yes", "no") and len(p["outputs"]["init"]["loglik"]) == 2
             for p in nli)


def test_resume_continues_exactly(trained, tmp_path):
  """Stopping at step 3 and resuming gives the same losses as the uninterrupted run."""
  train(tmp_path, "--gin.TRAIN_STEPS=3", "--gin.EVAL_MIXTURES=None")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
  train(tmp_path, "--gin.EVAL_MIXTURES=None")
  resumed = metrics(tmp_path)
  assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
  straight = metrics(trained)
  assert [m["loss"] for m in resumed] == [m["loss"] for m in straight]


def test_eval_and_infer_commands(trained, capsys):
  assert main(["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH={trained}",
               "--gin.EVAL_MIXTURES={'seen': 'proc_add_zs_noopt'}",
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}",
               "--gin.eval_settings.max_examples_per_task=2"]) == 0
  report = json.loads((trained / "eval" / "eval" / "report.json").read_text())
  assert report["checkpoints"] == ["checkpoint"]
  # The same parameters give the same scores as the end-of-training eval.
  end = json.loads((trained / "eval" / "heldout" / "report.json").read_text())
  assert (report["sets"]["seen"]["overall"]["exact_match"]["checkpoint"]
          == end["sets"]["seen"]["overall"]["exact_match"]["step_6"])
  capsys.readouterr()
  assert main(["infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH={trained}",
               "--gin.infer.max_new_tokens=3", "--input", "What is 1 + 2?"]) == 0
  assert ">>> What is 1 + 2?" in capsys.readouterr().out
