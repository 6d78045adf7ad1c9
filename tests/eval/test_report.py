"""The held-out report: FLAN's best template chosen on dev and reported on test; decontamination counts."""

import json

import gin
import jax
import jax.numpy as jnp
import pytest

import itjax_tasks.procedural  # noqa: F401
from itjax import config
from itjax.data.quality import scan
from itjax.errors import UserError
from itjax.eval.evaluator import _check_split, run_eval
from itjax.eval.report import summarize_set
from itjax.models.decoder import Decoder, DecoderConfig


def _rows(dataset, per_template):
  """Rows of one dataset: per_template[t] = list of 0/1 outcomes for template t."""
  rows, outcomes = [], []
  for t, vals in enumerate(per_template):
    for v in vals:
      rows.append({"cluster": "nli", "dataset": dataset, "template_id": t})
      outcomes.append(v)
  return rows, outcomes


def test_best_template_is_chosen_on_dev_and_reported_on_test():
  test_rows, test_em = _rows("rte", [[1, 1], [0, 0], [1, 0]])  # on test, template 0 is best (100)
  dev_rows, dev_em = _rows("rte", [[0, 0], [1, 1], [0, 0]])    # on dev, template 1 is
  summary = summarize_set(test_rows, {"exact_match": {"ck": test_em}}, (dev_rows, {"exact_match": {"ck": dev_em}}))
  (ds,) = summary["datasets"]
  assert ds["best_template_id"]["exact_match"]["ck"] == 1
  assert ds["best_template"]["exact_match"]["ck"] == 0.0  # template 1's *test* score, not the test maximum
  assert ds["scores"]["exact_match"]["ck"] == pytest.approx(50.0)
  oracle = summarize_set(test_rows, {"exact_match": {"ck": test_em}})
  assert oracle["datasets"][0]["best_template_id"]["exact_match"]["ck"] == 0
  assert oracle["datasets"][0]["best_template"]["exact_match"]["ck"] == 100.0


def test_ties_pick_the_lowest_template_and_clusters_average_the_best():
  a_rows, a = _rows("rte", [[1], [1], [0]])
  b_rows, b = _rows("cb", [[0], [0], [0]])
  summary = summarize_set(a_rows + b_rows, {"exact_match": {"ck": a + b}})
  by_name = {d["dataset"]: d for d in summary["datasets"]}
  assert by_name["rte"]["best_template_id"]["exact_match"]["ck"] == 0
  (cluster,) = summary["clusters"]
  assert cluster["best_template"]["exact_match"]["ck"] == pytest.approx(50.0)  # mean of 100 (rte) and 0 (cb)
  assert summary["overall_best_template"]["exact_match"]["ck"] == pytest.approx(50.0)


def test_a_missing_eval_split_names_the_task_and_its_splits():
  with pytest.raises(UserError, match=r"proc_add_zs_noopt.*no 'dev' split.*'test'.*'train'.*'validation'"):
    _check_split("proc_add_zs_noopt", "dev")


def test_report_states_selection_and_decontamination(tmp_path):
  config.register_configurables()
  gin.clear_config()
  gin.parse_config(["eval_settings.split = 'test'", "eval_settings.selection_split = 'validation'",
                    "eval_settings.batch_size = 8", "eval_settings.max_new_tokens = 2",
                    "eval_settings.max_examples_per_task = 2", "eval_settings.decontamination_examples_per_task = 20"])
  try:
    model = Decoder(DecoderConfig(emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    sets = {"held-out": "proc_color_nli_zs_opt", "seen": "proc_add_zs_noopt"}
    run_eval(model, {"ck": params}, sets, {"inputs": 64, "targets": 16}, str(tmp_path), title="t",
             train_mixture="proc_add_zs_noopt")
  finally:
    gin.clear_config()
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["split"] == "test" and report["selection_split"] == "validation"
  for name in sets:
    assert report["sets"][name]["selection"] == ("best template chosen on the validation split, reported on the "
                                                 "test split")
  counts = report["decontamination"]
  expected = scan("proc_add_zs_noopt", ["proc_add_zs_noopt"], max_per_task=20,
                  eval_splits=("test", "validation"))["totals"]
  assert counts["seen"]["eval_splits"] == ["test", "validation"]  # both splits the eval reads
  assert counts["seen"]["contaminated"] == expected["contaminated"] > 0  # same task, same templates
  assert counts["seen"]["train_examples_scanned"] == expected["examples"] == 20
  # Per training task: which of them overlap the set (tasks with none are left out).
  assert counts["seen"]["tasks"] == {"proc_add_zs_noopt": {"contaminated": expected["contaminated"], "examples": 20}}
  assert counts["held-out"]["tasks"] == {} and counts["held-out"]["contaminated"] == 0
  md = (tmp_path / "report.md").read_text()
  assert "Decontamination" in md and "of 20 training examples scanned" in md
  assert f"most contaminated training tasks: `proc_add_zs_noopt` {expected['contaminated']}/20" in md
  assert "## Best template per cluster" in md
  rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
  assert rows and all(set(r["outputs"]) == {"ck"} for r in rows)
  # Each row names its metrics (primary first) and carries its per-row scores; NLI with options leads with rank.
  nli = next(r for r in rows if r["cluster"] == "nli")
  assert nli["metrics"][0] == "rank_accuracy" and "rank_accuracy" in nli["outputs"]["ck"]["scores"]
  held = report["sets"]["held-out"]
  assert held["overall_baselines"]["chance"] == pytest.approx(50.0)  # yes / no
  assert report["sets"]["seen"]["overall_baselines"] == {"chance": None, "majority": None}
  assert "baseline: majority" in md
