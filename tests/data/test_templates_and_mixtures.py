"""Templates render every variant; eval fans out over templates; held-out mixtures obey FLAN's rules."""

import pytest
import seqio
import tensorflow as tf

from itjax.data import templates as tmpl
from itjax.data.mixtures import heldout_split
from itjax.data.tasks import TaskInfo, task_info

LENGTHS = {"inputs": 128, "targets": 32}


def _examples(name, split, n=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return list((ds.take(n) if n else ds).as_numpy_iterator())


def test_options_variant_lists_options_and_noopt_does_not():
  opt = _examples("proc_color_nli_zs_opt", "validation", 3)
  noopt = _examples("proc_color_nli_zs_noopt", "validation", 3)
  for o, n in zip(opt, noopt, strict=True):
    assert o["inputs_pretokenized"].decode().endswith("\n\nOPTIONS:\n- yes\n- no\n")
    assert "OPTIONS" not in n["inputs_pretokenized"].decode()
    assert o["targets_pretokenized"] == n["targets_pretokenized"] in (b"yes", b"no")
    assert o["variant"] == b"zs_opt" and n["variant"] == b"zs_noopt" and o["cluster"] == b"nli"


def test_eval_split_renders_every_forward_template_train_split_one():
  info = task_info("proc_movie_review_zs_opt")
  assert info.num_templates == 4 and info.eval_templates == 3  # one template turns the task around
  rows = _examples("proc_movie_review_zs_opt", "validation")
  assert len(rows) == 64 * 3
  assert [int(r["template_id"]) for r in rows[:6]] == [0, 1, 2, 0, 1, 2]
  # Same example under each template: same answer, different phrasing.
  assert len({r["inputs_pretokenized"] for r in rows[:3]}) == 3 and len({r["answer"] for r in rows[:3]}) == 1
  train = _examples("proc_movie_review_zs_opt", "train", 400)
  ids = [int(r["template_id"]) for r in train]
  assert set(ids) == {0, 1, 2, 3}  # template chosen per example, reverse one included


def test_reverse_template_has_no_options_and_swaps_fields():
  ex = {"text": tf.constant("The film was superb."), "answer": tf.constant("positive"),
        "options": tf.constant(["positive", "negative"])}
  t = tmpl.Template("Write a {answer} review.", "{text}", reverse=True)
  inputs, targets = tmpl.render(t, ex, tmpl.ZERO_SHOT_OPT)
  assert inputs.numpy() == b"Write a positive review.\n" and targets.numpy() == b"The film was superb."


def test_options_placeholder_is_placed_where_the_template_says():
  ex = {"q": tf.constant("Red?"), "answer": tf.constant("yes"), "options": tf.constant(["yes", "no"])}
  t = tmpl.Template("{options_}\nQuestion: {q}")
  assert tmpl.render(t, ex, tmpl.ZERO_SHOT_OPT)[0].numpy() == b"OPTIONS:\n- yes\n- no\nQuestion: Red?\n"
  assert tmpl.render(t, ex, tmpl.ZERO_SHOT_NOOPT)[0].numpy() == b"Question: Red?\n"


def test_template_field_check_at_registration():
  import pytest

  with pytest.raises(ValueError, match="uses fields \\['premis'\\]"):
    tmpl.check_templates([tmpl.Template("{premis}")], {"premise", "answer"}, "x")
  with pytest.raises(ValueError, match="only turned-around templates"):
    tmpl.check_templates([tmpl.Template("{answer}", reverse=True)], {"answer"}, "x")


def test_procedural_data_is_deterministic():
  a = _examples("proc_add_zs_noopt", "validation", 5)
  b = _examples("proc_add_zs_noopt", "validation", 5)
  assert [r["inputs_pretokenized"] for r in a] == [r["inputs_pretokenized"] for r in b]


def test_heldout_mixture_excludes_cluster_and_eval_side_holds_it():
  train = seqio.get_mixture_or_task("proc_heldout_nli")
  evals = seqio.get_mixture_or_task("proc_heldout_nli_eval")
  assert {t.info.cluster for t in train.tasks} == {"arithmetic", "string", "sentiment", "reading_comp",
                                                              "list_ops"}
  assert {t.info.cluster for t in evals.tasks} == {"nli"}
  # Evaluation uses the with-options variant for datasets that have options.
  assert all(t.name.endswith("_zs_opt") for t in evals.tasks)


def _info(dataset, *clusters):
  return TaskInfo(f"{dataset}_zs_noopt", dataset, clusters, "zs_noopt", 1, False, 1)


def test_heldout_drops_every_cluster_its_datasets_belong_to():
  infos = [_info("mnli", "nli"), _info("qqp", "paraphrase", "nli"), _info("mrpc", "paraphrase"),
           _info("cosmos", "rc_commonsense", "reading_comp"), _info("record", "rc_commonsense"),
           _info("boolq", "reading_comp"), _info("copa", "commonsense")]
  # qqp is listed under NLI too: holding out NLI drops the whole paraphrase cluster...
  train, evals = heldout_split(infos, "nli")
  assert {t.dataset for t in evals} == {"mnli"}
  assert {t.dataset for t in train} == {"cosmos", "record", "boolq", "copa"}
  # ... and the reverse.
  train, evals = heldout_split(infos, "paraphrase")
  assert {t.dataset for t in evals} == {"qqp", "mrpc"}
  assert {t.dataset for t in train} == {"cosmos", "record", "boolq", "copa"}
  # Reading comprehension drops RC-with-commonsense (cosmos is listed under both).
  train, evals = heldout_split(infos, "reading_comp")
  assert {t.dataset for t in evals} == {"boolq"}
  assert {t.dataset for t in train} == {"mnli", "qqp", "mrpc", "copa"}


def test_overlapping_train_and_eval_are_refused():
  import pytest

  from itjax.data.mixtures import check_disjoint

  with pytest.raises(ValueError, match="share datasets \\['mnli'\\]"):
    check_disjoint([_info("mnli", "nli")], [_info("mnli", "nli")], "bad")


def test_few_shot_exemplars_use_the_same_template_and_never_the_example():
  rows = _examples("proc_successor_fs_noopt", "validation", 9)
  for r in rows:
    text = r["inputs_pretokenized"].decode()
    blocks = text.split("\n\n")
    assert len(blocks) == 3  # two solved exemplars, then the query
    query = blocks[-1]
    assert all(b.split("\n")[0] != query.strip() for b in blocks[:-1])
    # Each exemplar is the same template, solved: "<prompt>\n<answer>".
    template_words = query.split()[:3]
    for b in blocks[:-1]:
      prompt, answer = b.split("\n")
      assert prompt.split()[:3] == template_words
      assert int(answer) == int(prompt.split()[-1].rstrip("?.")) + 1


def test_few_shot_exemplar_equal_to_the_example_is_dropped():
  ex = {"a": tf.constant("7"), "answer": tf.constant("8"), "options": tf.constant([], tf.string)}
  shots = {"a": tf.constant(["7", "1", "2"]), "answer": tf.constant(["8", "2", "3"]),
           "options": tf.zeros((3, 0), tf.string)}
  inputs, _ = tmpl.with_exemplars(tmpl.Template("After {a}?"), ex, shots, tmpl.FEW_SHOT_NOOPT)
  assert inputs.numpy() == b"After 1?\n2\n\nAfter 2?\n3\n\nAfter 7?\n"


def test_few_shot_truncates_from_the_left_so_the_query_survives():
  ds = seqio.get_mixture_or_task("proc_successor_fs_noopt").get_dataset({"inputs": 24, "targets": 8},
                                                                         split="validation", shuffle=False)
  from itjax.data.vocab import REGISTERED

  for ex in ds.take(3).as_numpy_iterator():
    full = ex["inputs_pretokenized"].decode()
    kept = REGISTERED.decode(ex["inputs"].tolist())
    assert len(ex["inputs"]) == 24 and full.endswith(kept)


def test_chain_of_thought_variant_reasons_then_answers():
  assert "proc_add_zs_cot" in seqio.TaskRegistry.names() and "proc_uppercase_zs_cot" not in seqio.TaskRegistry.names()
  for r in _examples("proc_add_zs_cot", "validation", 3):
    inputs, target = r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode()
    assert inputs.endswith("Let's think step by step.\n")
    assert target.startswith("Adding ") and target.endswith(f"So the answer is {r['answer'].decode()}.")
    assert tmpl.extract_cot_answer(target) == r["answer"].decode()
  assert tmpl.extract_cot_answer("no conclusion here") == ""


def test_heldout_mixture_rates_are_examples_proportional_capped_and_tempered(capsys):
  """FLAN's rates: min(n, cap) per dataset, optionally ^(1/T); the stream samples tasks at those rates."""
  import random

  from itjax.cli import main
  from itjax.data.mixtures import register_heldout_mixtures
  from itjax.data.pipeline import train_examples
  from itjax.data.sources import procedural_source
  from itjax.data.tasks import register_instruction_task
  from itjax.data.vocab import REGISTERED

  sizes = {"ma": ("a", 50), "mb": ("a", 400), "mc": ("c", 100), "md": ("b", 80)}
  names = []
  for i, (d, (cluster, n)) in enumerate(sizes.items()):
    def gen(r: random.Random):
      return {"x": str(r.randrange(1000)), "answer": "y"}

    names += register_instruction_task(f"mix_{d}", cluster, procedural_source(gen, ("x",), {"train": n}, seed=i),
                                       [tmpl.Template(d + " {x}")], fields=("x",), has_options=False)
  mixtures = (register_heldout_mixtures("mixt", names, rate_cap=300)
              + register_heldout_mixtures("mixtemp", names, rate_cap=300, temperature=2.0))
  try:
    for prefix, power in (("mixt", 1.0), ("mixtemp", 0.5)):
      m = seqio.get_mixture_or_task(f"{prefix}_heldout_b")
      assert {t.name: m.get_rate(t) for t in m.tasks} == pytest.approx(
          {f"mix_{d}_zs_noopt": min(sizes[d][1], 300) ** power for d in ("ma", "mb", "mc")})
    # `itjax tasks show` prints the normalized rates.
    assert main(["tasks", "show", "mixt_heldout_b"]) == 0
    out = capsys.readouterr().out
    assert "mix_mb_zs_noopt" in out and f"{300 / 450:6.2%}" in out and f"{50 / 450:6.2%}" in out
    # The training stream draws each task at its rate.
    vocab, counts = REGISTERED, {"ma": 0, "mb": 0, "mc": 0}
    for ex in train_examples("mixt_heldout_b", LENGTHS, seed=0).take(4500).as_numpy_iterator():
      counts[vocab.decode(ex["inputs"].tolist()).split()[0]] += 1
    for d, rate in (("ma", 50 / 450), ("mb", 300 / 450), ("mc", 100 / 450)):
      assert counts[d] / 4500 == pytest.approx(rate, abs=0.03)
  finally:
    for n in mixtures:
      seqio.MixtureRegistry.remove(n)
    for n in names:
      seqio.TaskRegistry.remove(n)


def test_task_metadata_travels_with_the_task():
  """The info is the registered task's own: re-registering a name brings its new clusters; plain tasks have none."""
  import random

  from itjax.data import chat
  from itjax.data import tasks as tasks_lib
  from itjax.data.sources import procedural_source
  from itjax.data.tasks import InstructionTask, register_instruction_task

  def gen(r: random.Random):
    return {"x": str(r.randrange(10)), "answer": "y"}

  def register(cluster):
    return register_instruction_task("meta_travel", cluster, procedural_source(gen, ("x",), {"train": 4}, seed=0),
                                     [tmpl.Template("Echo {x}")], fields=("x",), has_options=False)

  (name,) = register(("first", "other"))
  old = seqio.get_mixture_or_task(name)
  try:
    assert isinstance(old, InstructionTask) and old.info is task_info(name) is task_info(old)
    assert task_info(name).clusters == ("first", "other") and not old.info.chat
    seqio.TaskRegistry.remove(name)
    assert register("second") == [name]
    new = seqio.get_mixture_or_task(name)
    assert task_info(name).clusters == ("second",) and new.info.cluster == "second"
    assert old.info.clusters == ("first", "other")  # a mixture built on the old task keeps its metadata
    assert new.skips is not old.skips and new.skips.dataset == "meta_travel"
    plain = seqio.Task("meta_plain", source=procedural_source(gen, ("x",), {"train": 4}, seed=0),
                       output_features=tasks_lib.output_features(), preprocessors=[])
    assert task_info(plain) is None
    # Neither registry of old survives beside seqio's.
    assert not hasattr(tasks_lib, "TASK_INFO") and not hasattr(chat, "CHAT_TASKS")
  finally:
    seqio.TaskRegistry.remove(name)


def test_a_datasets_variants_share_its_capped_rate():
  """A dataset with options (zs_opt + zs_noopt) weighs what one without them does: the cap is per dataset."""
  import random

  from itjax.data.mixtures import register_heldout_mixtures
  from itjax.data.sources import procedural_source
  from itjax.data.tasks import register_instruction_task

  def gen(r: random.Random):
    return {"x": str(r.randrange(1000)), "answer": "y", "options": ["y", "n"]}

  names = []
  for i, (d, cluster, opts) in enumerate([("va", "a", True), ("vb", "a", False), ("vc", "c", False)]):
    names += register_instruction_task(f"share_{d}", cluster, procedural_source(gen, ("x",), {"train": 500}, seed=i),
                                       [tmpl.Template("{x}")], fields=("x",), has_options=opts)
  mixtures = register_heldout_mixtures("share", names, rate_cap=300)
  try:
    m = seqio.get_mixture_or_task("share_heldout_c")
    rates = {t.name: m.get_rate(t) for t in m.tasks}
    assert rates == pytest.approx({"share_va_zs_opt": 150, "share_va_zs_noopt": 150, "share_vb_zs_noopt": 300})
  finally:
    for n in mixtures:
      seqio.MixtureRegistry.remove(n)
    for n in names:
      seqio.TaskRegistry.remove(n)
