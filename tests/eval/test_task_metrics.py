"""Each task is scored with its own metrics (TaskInfo.metrics, its seqio metric_fns, its cluster's defaults), per
template group, against the reference libraries; baselines sit beside rank accuracy; missing metrics are not 0."""

import dataclasses
import json
import random

import pytest
import sacrebleu
import seqio
import tensorflow as tf
from rouge_score import rouge_scorer

from itjax.data.sources import procedural_source
from itjax.data.tasks import output_features, register_instruction_task
from itjax.data.templates import Template as T
from itjax.errors import UserError
from itjax.eval import metrics as M
from itjax.eval import task_metrics as tm
from itjax.eval.report import Corpus, summarize_set, write_report

SUMMARIES = [("police arrested five people in london . they were charged", "five people were arrested by police"),
             ("the cats are sitting on the mat . they purr", "a cat sat on the mat . it purrs"),
             ("stocks fell sharply on monday", "stocks fell on monday"),
             ("a storm hit the coast overnight", "the storm hit the northern coast")]
TRANSLATIONS = [("the house is small", "the house is small"), ("i like green apples", "i like the green apple"),
                ("he reads a book every day", "he is reading a book each day"),
                ("we went to the beach yesterday", "yesterday we go to beach")]


def _gen(r: random.Random):
  return {"x": str(r.randrange(100)), "answer": "a"}


def _register(dataset: str, cluster: str, *, has_options: bool = False, metric_fns=(), metrics=()) -> str:
  """A registered instruction task (no data is read); `metrics` set on its TaskInfo."""
  fields = ("x",)
  name = register_instruction_task(dataset, cluster, procedural_source(_gen, fields, {"validation": 4}, seed=1),
                                   [T("Echo {x}"), T("Say {x}")], fields=fields, has_options=has_options,
                                   metric_fns=metric_fns)[0]
  if metrics:
    task = seqio.get_mixture_or_task(name)
    task.info = dataclasses.replace(task.info, metrics=tuple(metrics))
  return name


@pytest.fixture
def registered():
  names = []

  def add(*args, **kwargs):
    names.append(_register(*args, **kwargs))
    return names[-1]

  yield add
  for n in names:
    seqio.TaskRegistry.remove(n)


def _rows(task: str, dataset: str, cluster: str, pairs, templates=(0, 1), options=()):
  """Rows (and generations) of `pairs` = [(target, generation)], each pair under every template."""
  rows, gens = [], []
  for t in templates:
    for target, gen in pairs:
      rows.append({"task": task, "dataset": dataset, "cluster": cluster, "variant": "zs_noopt", "template_id": t,
                   "inputs": f"in {t}", "target": target, "answer": target, "options": list(options)})
      gens.append(gen)
  return rows, gens


def _summary(rows, gens, ranked=None):
  ranked = ranked or [None] * len(rows)
  scores = tm.score_rows(rows, gens, ranked)
  return summarize_set(rows, tm.checkpoint_scores({"ck": scores})), scores


def _reference_rouge(pairs):
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
  scores = [scorer.score(t.replace(" . ", " .\n"), p.replace(" . ", " .\n")) for t, p in pairs]
  return {k: 100 * sum(s[k].fmeasure for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeLsum")}


def test_summarization_is_scored_by_rouge_as_rouge_score(registered, tmp_path):
  task = registered("tm_summ", "summarization")
  # Template 0 sees the first two summaries, template 1 the last two.
  rows = [dict(r, template_id=0 if i < 2 else 1) for i, r in enumerate(_rows(task, "tm_summ", "summarization",
                                                                             SUMMARIES, templates=(0,))[0])]
  gens = [g for _, g in SUMMARIES]
  summary, _ = _summary(rows, gens)
  (ds,) = summary["datasets"]
  assert ds["primary_metric"] == "rougeLsum" and {"rouge1", "rouge2", "rougeLsum", "exact_match"} <= set(ds["metrics"])
  for t in summary["templates"]:
    want = _reference_rouge(SUMMARIES[:2] if t["template"] == 0 else SUMMARIES[2:])
    for k, v in want.items():
      assert t["scores"][k]["ck"] == pytest.approx(v)
  want = {k: (_reference_rouge(SUMMARIES[:2])[k] + _reference_rouge(SUMMARIES[2:])[k]) / 2 for k in M.ROUGE_TYPES}
  assert want["rougeLsum"] > 0 and ds["scores"]["rougeLsum"]["ck"] == pytest.approx(want["rougeLsum"])
  assert ds["scores"]["exact_match"]["ck"] == 0.0  # still reported, and 0: no summary is copied exactly
  assert ds["scores"]["rank_accuracy"]["ck"] is None  # no options
  # The report carries them to report.json, report.md and the plots.
  scores = tm.score_rows(rows, gens, [None] * 4)
  outputs = {"ck": tm.row_outputs(gens, [None] * 4, scores)}
  write_report(str(tmp_path), {"s": (rows, outputs, tm.checkpoint_scores({"ck": scores}))}, "t")
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["metrics"][:4] == ["exact_match", "rouge1", "rouge2", "rougeLsum"]
  assert report["sets"]["s"]["overall"]["rouge1"]["ck"] == pytest.approx(want["rouge1"])
  assert (tmp_path / "clusters_rougeLsum.png").stat().st_size > 1000
  md = (tmp_path / "report.md").read_text()
  assert "| s | summarization | tm_summ | 4 | 2 | rougeLsum* |" in md and "rougeLsum ck" in md
  assert outputs["ck"][0]["scores"]["rougeLsum"] > 0  # per-row scores for predictions.jsonl and the HTML


def test_extractive_qa_gets_squad_f1(registered):
  task = registered("tm_xqa", "extractive_qa")
  rows, gens = _rows(task, "tm_xqa", "extractive_qa", [("a cat sat down", "the cat sat"), ("Paris", "paris.")])
  summary, _ = _summary(rows, gens)
  (ds,) = summary["datasets"]
  assert ds["primary_metric"] == "squad_f1"
  assert ds["scores"]["squad_f1"]["ck"] == pytest.approx((80.0 + 100.0) / 2)  # F1 0.8 (hand value) and 1
  assert ds["scores"]["squad_exact_match"]["ck"] == pytest.approx(50.0)
  assert ds["scores"]["exact_match"]["ck"] == 0.0


def test_translation_bleu_is_corpus_bleu_of_each_template_group(registered):
  task = registered("tm_mt", "translation")
  rows, gens = _rows(task, "tm_mt", "translation", TRANSLATIONS[:2], templates=(0,))
  more, more_gens = _rows(task, "tm_mt", "translation", TRANSLATIONS[2:], templates=(1,))
  summary, scores = _summary(rows + more, gens + more_gens)
  assert isinstance(scores["bleu"], Corpus)
  by_template = {t["template"]: t["scores"]["bleu"]["ck"] for t in summary["templates"]}
  groups = {0: TRANSLATIONS[:2], 1: TRANSLATIONS[2:]}
  for t, pairs in groups.items():
    want = sacrebleu.corpus_bleu([p for _, p in pairs], [[r for r, _ in pairs]], tokenize="intl").score
    assert by_template[t] == pytest.approx(want)
    # A corpus statistic, not the mean of sentence scores.
    sentence_mean = sum(M.sentence_bleu(r, p) for r, p in pairs) / len(pairs)
    assert by_template[t] != pytest.approx(sentence_mean)
  (ds,) = summary["datasets"]
  assert ds["primary_metric"] == "bleu"
  assert ds["scores"]["bleu"]["ck"] == pytest.approx((by_template[0] + by_template[1]) / 2)
  # The per-row stand-in for the side-by-side colours.
  out = tm.row_outputs(gens + more_gens, [None] * 4, scores)
  assert out[0]["scores"]["sentence_bleu"] == pytest.approx(100.0) and "bleu" not in out[0]["scores"]


def test_a_tasks_own_seqio_metric_fns_run_on_postprocessed_text():
  calls = []

  def yes_no_accuracy(targets, predictions):
    calls.append((list(targets), list(predictions)))
    return {"yes_no_accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions, strict=True)) / len(targets),
            "group_size": seqio.metrics.Scalar(len(targets))}

  def postprocess(text, example=None, is_target=False):
    assert example is not None and "targets_pretokenized" in example
    return text.removeprefix("Answer:").strip().lower()

  name = "tm_seqio_plain"
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(lambda split, shuffle_files: tf.data.Dataset.range(1),
                                                               splits=["validation"]),
                         output_features=output_features(), postprocess_fn=postprocess,
                         metric_fns=[yes_no_accuracy])
  try:
    rows, gens = _rows(name, "tm_seqio", "misc", [("yes", "Answer: YES"), ("no", "Answer: yes"), ("no", "no")])
    summary, _ = _summary(rows, gens)
  finally:
    seqio.TaskRegistry.remove(name)
  (ds,) = summary["datasets"]
  assert ds["scores"]["yes_no_accuracy"]["ck"] == pytest.approx(200 / 3)  # after postprocessing: yes, yes, no
  assert ds["scores"]["exact_match"]["ck"] == pytest.approx(100 / 3)  # on the raw generations: only "no"
  # Corpus-level per template group (3 rows each), as seqio's evaluator calls them.
  assert [t["scores"]["group_size"]["ck"] for t in summary["templates"]] == [3.0, 3.0]
  assert calls[0] == (["yes", "no", "no"], ["yes", "yes", "no"])
  # Without the task's own metrics, no cluster defaults are added beside them for "misc" (exact match only).
  assert "rouge1" not in ds["metrics"]


def test_instruction_task_metric_fns_and_task_info_metrics(registered):
  def length(targets, predictions):
    return {"mean_length": sum(len(p) for p in predictions) / len(predictions)}

  with_fns = registered("tm_fns", "summarization", metric_fns=[length])
  named = registered("tm_named", "summarization", metrics=("squad_f1", "bleu"))
  rows, gens = _rows(with_fns, "tm_fns", "summarization", [("a b", "abcd")])
  more, more_gens = _rows(named, "tm_named", "summarization", [("a cat sat down", "the cat sat")])
  summary, _ = _summary(rows + more, gens + more_gens)
  ds = {d["dataset"]: d for d in summary["datasets"]}
  # The seqio metric_fns replace the cluster's defaults (ROUGE); exact match stays.
  assert ds["tm_fns"]["scores"]["mean_length"]["ck"] == 4.0 and ds["tm_fns"]["metrics"] == ["exact_match",
                                                                                            "mean_length"]
  # TaskInfo.metrics: exactly those (and exact match), the first one primary; not the cluster's ROUGE.
  assert ds["tm_named"]["primary_metric"] == "squad_f1"
  assert ds["tm_named"]["scores"]["squad_f1"]["ck"] == pytest.approx(80.0)
  assert ds["tm_named"]["scores"]["bleu"]["ck"] is not None
  assert set(ds["tm_named"]["metrics"]) == {"exact_match", "squad_f1", "bleu"}
  assert "rouge1" not in summary["metrics"]
  assert tm.task_metrics(named, "summarization", False).source == "task_info"


def test_unknown_task_info_metric_names_the_task(registered):
  name = registered("tm_bad", "qa", metrics=("squad_f2",))
  with pytest.raises(UserError, match=r"tm_bad.*squad_f2.*squad_f1"):
    tm.task_metrics(name, "qa", False)


@pytest.mark.parametrize("cluster,has_options,primary,names", [
    ("summarization", False, "rougeLsum", ("rouge", "exact_match")),
    ("summarization", True, "rank_accuracy", ("exact_match",)),  # AG News: classification within summarization
    ("struct_to_text", False, "rougeLsum", ("rouge", "bleu", "exact_match")),
    ("translation", False, "bleu", ("bleu", "exact_match")),
    ("reading_comp", False, "squad_f1", ("squad_f1", "squad_exact_match", "exact_match")),
    ("closed_book_qa", False, "squad_exact_match", ("squad_exact_match", "squad_f1", "exact_match")),
    ("sentiment", True, "rank_accuracy", ("exact_match",)),
    ("arithmetic", False, "exact_match", ("exact_match",)),
    ("something_new", False, "exact_match", ("exact_match",)),
])
def test_defaults_by_cluster(cluster, has_options, primary, names):
  spec = tm.task_metrics("not_a_registered_task", cluster, has_options)
  assert spec.names == names and spec.primary == primary
  assert ("rank_accuracy" in spec.scores) is has_options


def test_chance_and_majority_baselines_beside_rank_accuracy(registered):
  task = registered("tm_cls", "sentiment", has_options=True)
  rows = []
  for target, options in (("yes", ["yes", "no"]), ("yes", ["yes", "no"]), ("no", ["yes", "no", "maybe", "x"])):
    rows += _rows(task, "tm_cls", "sentiment", [(target, target)], templates=(0,), options=options)[0]
  ranked = [{"option": "yes", "option_norm": "no", "loglik": [0.0]}] * 3
  summary, _ = _summary(rows, ["yes", "no", "no"], ranked)
  (ds,) = summary["datasets"]
  assert ds["primary_metric"] == "rank_accuracy"
  assert ds["scores"]["rank_accuracy"]["ck"] == pytest.approx(200 / 3)
  assert ds["baselines"]["chance"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1 / 4) / 3)
  assert ds["baselines"]["majority"] == pytest.approx(200 / 3)  # "yes" is 2 of the 3 gold answers
  assert summary["overall_baselines"] == ds["baselines"]


def test_a_metric_a_dataset_lacks_is_none_not_zero(registered):
  summ = registered("tm_summ2", "summarization")
  nli = registered("tm_nli2", "nli")
  rows, gens = _rows(summ, "tm_summ2", "summarization", SUMMARIES[:2])
  more, more_gens = _rows(nli, "tm_nli2", "nli", [("yes", "yes"), ("no", "yes")])
  summary, _ = _summary(rows + more, gens + more_gens)
  clusters = {c["cluster"]: c for c in summary["clusters"]}
  assert clusters["nli"]["scores"]["rouge1"]["ck"] is None
  assert clusters["nli"]["baselines"] == {"chance": None, "majority": None}  # no options
  # The set's mean is over the clusters that have the metric: not halved by the NLI cluster.
  assert summary["overall"]["rouge1"]["ck"] == pytest.approx(clusters["summarization"]["scores"]["rouge1"]["ck"])
  assert summary["overall"]["exact_match"]["ck"] == pytest.approx((0.0 + 50.0) / 2)
  nli_ds = next(d for d in summary["datasets"] if d["dataset"] == "tm_nli2")
  assert nli_ds["metrics"] == ["exact_match"]  # what it has; rank accuracy and ROUGE do not apply


def test_chain_of_thought_rows_are_scored_on_the_answer(registered):
  task = registered("tm_cot", "extractive_qa")
  rows, _ = _rows(task, "tm_cot", "extractive_qa", [("Paris", "")], templates=(0,))
  rows[0].update(variant="zs_cot", target="It is in France. So the answer is Paris.", answer="Paris")
  scores = tm.score_rows(rows, ["The capital. So the answer is the Paris."], [None])
  assert scores["squad_exact_match"] == [1.0] and scores["exact_match"] == [0.0]
