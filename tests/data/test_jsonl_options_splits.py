"""JSONL answer options (per line, label set, from answers), ratio splits by group, pre-templated datasets."""

import collections
import json
import re

import pytest
import seqio

from itjax.data import jsonl, pretemplated, splits
from itjax.data.tasks import task_info
from itjax.errors import UserError

LENGTHS = {"inputs": 512, "targets": 64}
RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _write(path, lines):
  with open(path, "w") as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return str(path)


@pytest.fixture
def tasks():
  """Unique task names; every task registered under them is removed afterwards."""
  made = []

  def name():
    made.append(f"jsonl_opt_test_{len(made)}")
    return made[-1]

  yield name
  for prefix in made:
    for n in list(seqio.TaskRegistry.names()):
      if n.startswith(prefix + "_"):
        seqio.TaskRegistry.remove(n)


def _rows(name, split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def _text(row, key="inputs_pretokenized"):
  return row[key].decode()


# --- splits.py: ratios, hashing, group keys ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad,message", [
    ({"train": 0.9, "test": 0.2}, "ratios must sum to 1, got 1.1"),
    ({"train": 1.2, "test": -0.2}, "ratio of 'test' must be a positive number, got -0.2"),
    ({"train": 1.0, "test": 0}, "ratio of 'test' must be a positive number, got 0"),
    ({"train": "0.5", "test": 0.5}, "ratio of 'train' must be a positive number"),
    ({}, "expected a mapping of split name to ratio"),
    ({"": 1.0}, "split names must be non-empty strings"),
])
def test_bad_ratios_are_user_errors(bad, message):
  with pytest.raises(UserError, match=re.escape(message)):
    splits.Splitter(bad)


def test_bucket_is_a_stable_hash_and_sizes_follow_ratios():
  assert splits.bucket("abc", 0) == 0.8478990972757106  # BLAKE2b: the same on every run and machine
  assert splits.bucket("abc", 1) == 0.606486085698183
  s = splits.Splitter(RATIOS)
  keys = [f"passage {i}" for i in range(20_000)]
  sides = [s.split_of(k) for k in keys]
  assert sides == [splits.Splitter(dict(RATIOS)).split_of(k) for k in keys]  # deterministic
  counts = collections.Counter(sides)
  for name, ratio in RATIOS.items():
    assert abs(counts[name] / len(keys) - ratio) < 0.01, counts
  other = [splits.Splitter(RATIOS, seed=1).split_of(k) for k in keys]
  assert sum(a != b for a, b in zip(sides, other, strict=True)) > 0.2 * len(keys)  # the seed reslices


def test_field_and_callable_group_keys():
  by_field = splits.keyer("context")
  assert by_field({"context": "  The  Cat "}) == by_field({"context": "the cat"}) == "the cat"
  assert by_field({"context": 7}) == "7"
  with pytest.raises(splits.GroupKeyError, match="missing"):
    by_field({"question": "q"})
  assert splits.keyer(lambda o: o["a"] + o["b"])({"a": "X", "b": "y"}) == "xy"
  with pytest.raises(splits.GroupKeyError, match="returned int"):
    splits.keyer(lambda o: 3)({})
  default = splits.keyer(None)
  assert default({"a": 1, "b": "x"}) == default({"b": "x", "a": 1}) != default({"a": 2, "b": "x"})
  with pytest.raises(UserError, match="group_key: expected a field name"):
    splits.keyer(5)


PASSAGES = [f"Story {i} begins here. {['Ann', 'Bob', 'Cy'][i % 3]} walked to the {['park', 'shop'][i % 2]} on day {i} "
            f"and met a friend called F{i * 7}. It rained." for i in range(40)]
TEMPLATES = [  # different wording around the same passage: labels, glued text, quotes, the passage last
    lambda p, q, yes: {"prompt": f"Context: {p}\nQuestion: {q}\nAnswer:\n",
                       "completion": f"{'yes' if yes else 'no'}<|endoftext|>"},
    lambda p, q, yes: {"prompt": f"{p} Given the story above, {q}\n", "completion": "yes" if yes else "no"},
    lambda p, q, yes: {"prompt": f'Read "{p}" and answer the question "{q}"\n', "completion": "yes" if yes else "no"},
    lambda p, q, yes: {"prompt": f"Question: {q}\nWhat follows is the text.\n{p}\n", "completion": str(yes).lower()},
]


def _rendered(template, n_questions=3):
  """(passage index, line) for every passage x question rendered with `template`."""
  return [(i, template(p, f"Question {j} about story {i}?", j % 2 == 0)) for i, p in enumerate(PASSAGES)
          for j in range(n_questions)]


def test_passage_rule_keys_one_passage_alike_under_every_template():
  keys = collections.defaultdict(set)
  for template in TEMPLATES:
    lines = _rendered(template)
    key = splits.keyer(splits.PASSAGE, [obj for _, obj in lines])
    for i, obj in lines:
      keys[i].add(key(obj))
  assert all(len(k) == 1 for k in keys.values()), keys  # one key per passage, across templates and questions
  assert len({next(iter(k)) for k in keys.values()}) == len(PASSAGES)  # and different passages differ


def test_passage_rule_drops_template_text_and_labels():
  reviews = [f"{w} film number {i}, I say." for i, w in enumerate(["A good", "Some bad", "The best"] * 4)]
  template = splits.template_text([{"prompt": f"Review: {r}\nIs it positive?\nID {i}"} for i, r in enumerate(reviews)])
  assert template.affixes["prompt"] == ("Review: ", "") and "is it positive" in template.sentences
  key = splits.passage_key({"prompt": "Review: A good film, I say.\nIs it positive?\nID 99"}, template)
  assert key == "a good film, i say"  # not the longer template question, not the ID
  assert splits.sentences('Product review: "Great." Fine - really') == ["product review", "great", "fine", "really"]


# --- answer options on JSONL tasks ------------------------------------------------------------------------------------
def test_options_field_gives_each_example_its_own_choices(tmp_path, tasks):
  path = _write(tmp_path / "mc.jsonl", [
      {"instruction": "Pick a color.", "output": "red", "choices": ["red", "blue"]},
      {"instruction": "Pick a fruit.", "output": " fig ", "choices": ["apple", "fig", "kiwi", "plum"]},
  ])
  opt, noopt = jsonl.register_jsonl_task(tasks(), {"validation": path}, "alpaca", options_field="choices",
                                         templates=[jsonl.ALPACA_VARIATIONS[0]])
  assert opt.endswith("_zs_opt") and noopt.endswith("_zs_noopt") and task_info(opt).has_options
  a, b = _rows(opt, "validation")
  assert a["options"].tolist() == [b"red", b"blue"]  # no padding from the longer row
  assert b["options"].tolist() == [b"apple", b"fig", b"kiwi", b"plum"]
  assert _text(b).endswith("\n\nOPTIONS:\n- apple\n- fig\n- kiwi\n- plum\n")
  assert all(r["answer"].decode().strip() in r["options"].astype(str).tolist() for r in (a, b))
  assert "OPTIONS" not in _text(_rows(noopt, "validation")[0])


def test_label_set_options_rank_classification_inputs(tmp_path, tasks):
  labels = ["positive", "negative"]
  path = _write(tmp_path / "s.jsonl", [{"prompt": f"Review {i}. Sentiment?", "completion": labels[i % 2]}
                                       for i in range(6)])
  opt, _ = jsonl.register_jsonl_task(tasks(), {"test": path}, "prompt_completion", options=["positive", "negative"])
  rows = _rows(opt, "test")
  assert len(rows) == 6
  for r in rows:  # what rank classification reads: the options, the gold answer among them, as the target
    assert r["options"].tolist() == [b"positive", b"negative"]
    assert r["targets_pretokenized"] == r["answer"] and r["answer"] in r["options"].tolist()
    assert _text(r).endswith("Sentiment?\n\nOPTIONS:\n- positive\n- negative\n")


def test_answer_outside_label_set_names_file_line_or_is_counted(tmp_path, tasks):
  lines = [{"instruction": "a", "output": "positive"}, {"instruction": "b", "output": "Positive"},
           {"instruction": "c", "output": "negative"}]
  path = _write(tmp_path / "l.jsonl", lines)
  name = jsonl.register_jsonl_task(tasks(), {"train": path}, "alpaca", options=["positive", "negative"])[0]
  with pytest.raises(UserError, match=re.escape(f"{path}:2: field 'output': answer 'Positive' is not one of the "
                                                "task's options ('positive', 'negative')")):
    seqio.get_mixture_or_task(name).num_input_examples("train")
  name = jsonl.register_jsonl_task(tasks(), {"train": path}, "alpaca", options=["positive", "negative"],
                                   on_error="skip")[0]
  source = seqio.get_mixture_or_task(name).source
  assert source.num_input_examples("train") == 2 and source.skipped == {"answer_not_in_options": 1}
  assert [r["answer"] for r in _rows(name)] == [b"positive", b"negative"]


OPTION_ERRORS = [
    ({"choices": "red, blue"}, "field 'choices': expected a list of strings (the answer options), got string"),
    ({"choices": ["red", 3]}, "field 'choices[1]': expected a string, got int"),
    ({"choices": ["red", " "]}, "field 'choices[1]': empty option"),
    ({"choices": ["red", "red "]}, "field 'choices': duplicate option 'red'"),
    ({"choices": ["red"]}, "field 'choices': rank classification needs at least 2 options, got 1"),
    ({}, "field 'choices': missing (fields present: instruction, output)"),
    ({"choices": ["blue", "green"]},
     "field 'choices': answer 'red' is not among this line's options ('blue', 'green')"),
]


@pytest.mark.parametrize("extra,message", OPTION_ERRORS)
def test_bad_options_field_names_file_line_and_field(tmp_path, extra, message):
  path = _write(tmp_path / "bad.jsonl", [{"instruction": "x", "output": "red", "choices": ["red", "blue"]},
                                         {"instruction": "x", "output": "red", **extra}])
  source = jsonl.jsonl_source({"train": path}, "alpaca", options_field="choices")
  with pytest.raises(UserError) as e:
    source.num_input_examples("train")
  assert str(e.value) == f"{path}:2: {message}", str(e.value)


def test_from_answers_takes_train_labels_and_checks_eval_answers(tmp_path, tasks):
  train = _write(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "completion": a}
                                            for i, a in enumerate(["b", "a", "c", "a", " b"])])
  test = _write(tmp_path / "test.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": "d"}])
  opt, _ = jsonl.register_jsonl_task(tasks(), {"train": train, "test": test}, "prompt_completion",
                                     options="from_answers")
  source = seqio.get_mixture_or_task(opt).source
  assert source.options_of(train) == ("a", "b", "c")  # sorted distinct stripped answers of the train split
  assert [r["options"].tolist() for r in _rows(opt)][0] == [b"a", b"b", b"c"]
  with pytest.raises(UserError, match=re.escape(f"{test}:2: field 'completion': answer 'd' is not one of the options "
                                                "taken from the train split's answers ('a', 'b', 'c')")):
    source.num_input_examples("test")


def test_from_answers_refuses_free_form_answers(tmp_path):
  path = _write(tmp_path / "gen.jsonl", [{"prompt": "q", "completion": f"answer {i}"} for i in range(21)])
  source = jsonl.jsonl_source({"train": path}, "prompt_completion", options="from_answers")
  with pytest.raises(UserError, match="the train split has 21 distinct answers, more than 20"):
    source.num_input_examples("train")
  with pytest.raises(UserError, match="from the 'train' split's answers; there is no such split"):
    jsonl.jsonl_source({"test": path}, "prompt_completion", options="from_answers")


@pytest.mark.parametrize("kwargs,message", [
    ({"options": ["a", "b"], "options_field": "choices"}, "not both"),
    ({"options": ["a"]}, "needs at least 2 options, got 1"),
    ({"options": ["a", "a"]}, "duplicate option 'a'"),
    ({"options": "from_answer"}, "expected a list of strings or 'from_answers'"),
    ({"options": ["a", ""]}, "options must be non-empty strings"),
    ({"group_key": "context"}, "only applies when slicing files into splits"),
    ({"splits": {"train": 0.5, "test": 0.6}}, "ratios must sum to 1"),
])
def test_bad_option_and_split_arguments_are_user_errors(kwargs, message):
  with pytest.raises(UserError, match=re.escape(message)):
    jsonl.jsonl_source({"train": "x.jsonl"}, "alpaca", **kwargs)
  with pytest.raises(UserError, match="do not apply to chat"):
    jsonl.jsonl_source({"train": "x.jsonl"}, "chat", options=["a", "b"])
  with pytest.raises(UserError, match="not one entry per split"):
    jsonl.jsonl_source({"train": "a.jsonl", "test": "b.jsonl"}, "alpaca", splits={"train": 0.5, "test": 0.5})


# --- slicing one file into splits -------------------------------------------------------------------------------------
def _qa_lines(n_contexts=60, per_context=4):
  return [{"instruction": f"Question {j} on text {i}?", "input": f"Shared text number {i}.", "output": f"a{j}",
           "context": f"ctx {i}"} for i in range(n_contexts) for j in range(per_context)]


def test_split_by_group_field_no_group_on_two_sides(tmp_path, tasks):
  path = _write(tmp_path / "qa.jsonl", _qa_lines())
  name = jsonl.register_jsonl_task(tasks(), {"train": path}, "alpaca", splits=RATIOS, group_key="context",
                                   templates=[jsonl.ALPACA_VARIATIONS[0]])[0]
  task = seqio.get_mixture_or_task(name)
  assert set(task.source.splits) == set(RATIOS)
  side_of = {}
  for split in RATIOS:
    rows = _rows(name, split)
    assert task.num_input_examples(split) == len(rows)  # counting respects the slicing
    for r in rows:
      ctx = r["inputs_pretokenized"].decode().split("Shared text number ")[1].split(".")[0]
      assert side_of.setdefault(ctx, split) == split  # no group on two sides
  assert sum(task.num_input_examples(s) for s in RATIOS) == 240
  assert len(side_of) == 60 and 30 < collections.Counter(side_of.values())["train"] < 58
  again = jsonl.jsonl_source(path, "alpaca", splits=RATIOS, group_key="context")  # a bare path works too
  assert {s: again.num_input_examples(s) for s in RATIOS} == {s: task.num_input_examples(s) for s in RATIOS}
  assert task.source.reports[path].splits == {s: task.num_input_examples(s) for s in RATIOS}


def test_split_group_key_callable_and_missing_field(tmp_path):
  path = _write(tmp_path / "qa.jsonl", _qa_lines(10, 2) + [{"instruction": "q", "output": "a"}])
  source = jsonl.jsonl_source([path], "alpaca", splits={"train": 0.5, "test": 0.5}, group_key=lambda o: o["input"])
  with pytest.raises(UserError, match=re.escape(f"{path}:21: group_key <lambda> raised KeyError: 'input'")):
    source.num_input_examples("train")
  source = jsonl.jsonl_source([path], "alpaca", splits={"train": 0.5, "test": 0.5}, group_key="context",
                              on_error="skip")
  assert source.num_input_examples("train") + source.num_input_examples("test") == 20
  assert source.skipped == {"missing_field": 1}
  assert source.reports[path].first_error["missing_field"].startswith(f"{path}:21: field 'context': missing")


# --- pre-templated datasets -------------------------------------------------------------------------------------------
def _pretemplated_files(tmp_path, n_questions=2):
  files = {}
  for t, template in enumerate(TEMPLATES):
    files[f"t{t}"] = _write(tmp_path / f"toy_story_t{t}.jsonl", [obj for _, obj in _rendered(template, n_questions)])
  return files


def test_pretemplated_files_are_templates_of_one_dataset(tmp_path, tasks):
  files = _pretemplated_files(tmp_path)
  dataset = tasks()
  names = pretemplated.register_pretemplated_dataset(dataset, files, cluster="rc", splits=RATIOS,
                                                     options="from_answers", metrics=("exact_match",))
  assert names == [f"{dataset}_zs_opt", f"{dataset}_zs_noopt"]
  info = task_info(names[0])
  assert (info.num_templates, info.eval_templates, info.has_options, info.metrics) == (4, 4, True, ("exact_match",))
  task = seqio.get_mixture_or_task(names[0])
  total = len(PASSAGES) * 2
  side = {}  # passage -> split, over every template's rows
  for split in RATIOS:
    rows = _rows(names[0], split)
    assert task.num_input_examples(split) == len(rows)
    for r in rows:
      story = re.search(r"Story (\d+) begins", _text(r)).group(1)
      assert side.setdefault(story, split) == split, (story, split)
      assert r["answer"] in r["options"].tolist() and r["targets_pretokenized"] == r["answer"]
  assert sum(task.num_input_examples(s) for s in RATIOS) == 4 * total  # every line of every file, once
  assert len(side) == len(PASSAGES)
  test = _rows(names[0], "test")
  assert [int(r["template_id"]) for r in test[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]  # read in turns
  t3 = [r for r in test if r["template_id"] == 3][0]
  assert _text(t3).endswith("\n\nOPTIONS:\n- false\n- true\n")  # the file's own train answers, sorted
  train = _rows(names[1], "train")
  assert {int(r["template_id"]) for r in train} == {0, 1, 2, 3} and all("OPTIONS" not in _text(r) for r in train)
  assert _text(train[0]).startswith("Context: Story")  # as rendered: no template applied on top


def test_pretemplated_per_template_options_and_single_split(tmp_path, tasks):
  files = _pretemplated_files(tmp_path, n_questions=1)
  dataset = tasks()
  options = {"t0": ["yes", "no"], "t1": "from_answers", "t2": None, "t3": ["true", "false"]}
  with pytest.raises(UserError, match="unknown: t9; missing: t3"):
    pretemplated.register_pretemplated_dataset(dataset, files, cluster="rc", splits="test",
                                               options={**{k: v for k, v in options.items() if k != "t3"}, "t9": None})
  with pytest.raises(UserError, match="'train' split's answers; there is no such split"):
    pretemplated.register_pretemplated_dataset(dataset, files, cluster="rc", splits="test", options=options)
  options["t1"] = ["yes", "no"]
  opt = pretemplated.register_pretemplated_dataset(dataset, files, cluster="rc", splits="test", options=options)[0]
  rows = _rows(opt, "test")
  assert len(rows) == 4 * len(PASSAGES)
  by_template = {int(r["template_id"]): r for r in rows}
  assert by_template[2]["options"].tolist() == [] and "OPTIONS" not in _text(by_template[2])
  assert by_template[3]["options"].tolist() == [b"true", b"false"]
  info = pretemplated.describe(seqio.get_mixture_or_task(opt).source)
  assert [(t, d["id"], d["options"]) for t, d in info.items()] == [
      ("t0", 0, ("yes", "no")), ("t1", 1, ("yes", "no")), ("t2", 2, None), ("t3", 3, ("true", "false"))]


def test_pretemplated_without_options_and_with_file_list(tmp_path, tasks):
  files = list(_pretemplated_files(tmp_path, n_questions=1).values())
  names = pretemplated.register_pretemplated_dataset(tasks(), files, cluster="rc", splits="validation")
  assert len(names) == 1 and names[0].endswith("_zs_noopt")
  rows = _rows(names[0], "validation")
  assert rows[0]["options"].tolist() == [] and int(rows[1]["template_id"]) == 1
  with pytest.raises(UserError, match="truncation='field:passage' cuts a template field"):
    pretemplated.register_pretemplated_dataset(tasks(), files, cluster="rc", truncation="field:passage")
  with pytest.raises(UserError, match="truncation='keep_middle': choose"):
    pretemplated.register_pretemplated_dataset(tasks(), files, cluster="rc", truncation="keep_middle")
  both = pretemplated.register_pretemplated_dataset(tasks(), files, cluster="rc", truncation="keep_both_ends")[0]
  assert task_info(both).truncation == "keep_both_ends"


def test_group_files_by_longest_known_dataset_name(tmp_path):
  for stem in ["adversarial_qa_dbert_based_on", "adversarial_qa_tell", "ag_news_classify", "ag_news_recommend",
               "unknown_thing"]:
    (tmp_path / f"{stem}.jsonl").write_text("")
  (tmp_path / "LICENSE").write_text("")
  with pytest.raises(UserError, match=r"1 file\(s\) match no known dataset name.*unknown_thing.jsonl"):
    pretemplated.group_files(tmp_path, ["ag_news", "adversarial_qa", "adversarial_qa_dbert"])
  groups = pretemplated.group_files(str(tmp_path), ["ag_news", "adversarial_qa", "adversarial_qa_dbert"],
                                    unmatched="ignore")
  assert {d: list(t) for d, t in groups.items()} == {
      "adversarial_qa": ["tell"], "adversarial_qa_dbert": ["based_on"], "ag_news": ["classify", "recommend"]}
  assert groups["ag_news"]["classify"] == str(tmp_path / "ag_news_classify.jsonl")


def test_jsonl_task_passes_truncation_and_metrics_on(tmp_path, tasks):
  path = _write(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}])
  name = jsonl.register_jsonl_task(tasks(), {"train": path}, "alpaca", truncation="keep_end", metrics=("exact_match",))
  info = task_info(name[0])
  assert (info.truncation, info.metrics) == ("keep_end", ("exact_match",))
