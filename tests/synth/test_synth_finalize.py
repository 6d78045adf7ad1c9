"""The final step: mixed-in safety / negative / custom examples, dedup and decontamination (itjax.data.quality),
and the output registered as a seqio task that trains a few steps in the offline default."""

import json
import os

import pytest
import seqio
from fake_teacher import FakeTeacher

from itjax.cli import main
from itjax.errors import UserError
from itjax.synth import finalize, mixins

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tiny.gin")
EVAL_TASK = "proc_add_zs_noopt"


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def eval_prompt():
  """The first validation prompt of a procedural eval task."""
  ds = seqio.get_mixture_or_task(EVAL_TASK).get_dataset(None, split="validation", shuffle=False)
  return next(ds.as_numpy_iterator())["inputs_pretokenized"].decode().strip()


def test_mixins_render_presets_custom_templates_and_limits(tmp_path):
  safety = _write(tmp_path / "safety.jsonl", [{"prompt": "How do I hotwire a car?", "response": "I can't help."},
                                              {"prompt": "Make a weapon.", "response": "I won't help with that."}])
  negative = _write(tmp_path / "neg.jsonl", [{"instruction": "Add 2 and 2.", "output": "4", "negative_output": "5",
                                              "explanation": "2 + 2 is 4, not 5."}])
  custom = _write(tmp_path / "qa.jsonl", [{"q": "Capital of Peru?", "a": "Lima", "ctx": "South America"}])
  (tmp_path / "t.json").write_text(json.dumps({"qa": {"instruction": "Answer: {q}", "input": "{ctx}",
                                                      "output": "{a}"}}))
  ms = mixins.parse_mix_flags([f"safety={safety}@1", f"negative={negative}", f"qa={custom}"],
                              mixins.load_templates(str(tmp_path / "t.json")))
  rows = [r for m in ms for r in mixins.render(m)]
  assert [(r["instruction"], r["input"], r["output"]) for r in rows] == [
      ("How do I hotwire a car?", "", "I can't help."),
      ("Add 2 and 2.\n\nHere is an incorrect answer:\n5\n\nExplain what is wrong with it, then give a correct answer.",
       "", "2 + 2 is 4, not 5.\n\nA correct answer: 4"),
      ("Answer: Capital of Peru?", "South America", "Lima")]
  assert rows[0]["provenance"] == {"method": "mixin", "mixin": "safety", "file": "safety.jsonl", "line": 1}


def test_mixin_mistakes_name_the_file_line_and_field(tmp_path):
  bad = _write(tmp_path / "safety.jsonl", [{"prompt": "ok", "response": "fine"}, {"prompt": "no response"}])
  with pytest.raises(UserError, match=r"safety.jsonl:2: field 'response': missing \(used by the 'safety' mix"):
    mixins.render(mixins.parse_mix_flags([f"safety={bad}"])[0])
  with pytest.raises(UserError, match="unknown template 'safty'; choose from negative, safety"):
    mixins.parse_mix_flags([f"safty={bad}"])
  with pytest.raises(UserError, match="no such file"):
    mixins.parse_mix_flags(["safety=/nonexistent.jsonl"])


def test_clean_counts_duplicates_and_contamination(eval_prompt):
  def row(i, o):
    return {"instruction": i, "input": "", "output": o}
  rows = [row("What is 2+3?", "5"), row("What is 2+3?", "5"), row("what is 2 + 3 ?", "5."),
          row(f"Solve this: {eval_prompt}", "x"), row("Name a colour.", "Red")]
  kept, removed = finalize.clean(rows, decontaminate=[EVAL_TASK])
  assert [r["instruction"] for r in kept] == ["What is 2+3?", "Name a colour."]
  assert removed == {"exact_duplicate": 1, "normalized_duplicate": 1, "contaminated": 1}


def test_distill_output_is_cleaned_registered_and_trains(tmp_path, eval_prompt, capsys):
  inp = _write(tmp_path / "in.jsonl", [{"id": "a", "instruction": "Name a fruit."},
                                       {"id": "b", "instruction": "Name a fruit."},  # same answer: a duplicate
                                       {"id": "c", "instruction": "Repeat the question."},
                                       {"id": "d", "instruction": "Name a vegetable."}])
  safety = _write(tmp_path / "safety.jsonl", [{"prompt": "Help me cheat on a test.", "response": "I won't."}])

  def respond(body, prompt):
    if "Repeat" in prompt:
      return f"The question was: {eval_prompt}"  # contaminated
    return "A banana." if "fruit" in prompt else "A carrot."

  srv = FakeTeacher(respond)
  out = tmp_path / "distill"
  try:
    assert main(["data", "distill", "--teacher_url", srv.url, "--teacher_model", "fake", "--output_dir", str(out),
                 "--input", inp, "--decontaminate", EVAL_TASK, "--mix", f"safety={safety}"]) == 0
  finally:
    srv.close()
  printed = capsys.readouterr().out
  assert "removed: contaminated 1, exact_duplicate 1" in printed and "mixed in (safety 1)" in printed
  report = json.loads((out / "report.json").read_text())
  assert report["final"]["written"] == 3 and report["final"]["decontaminated_against"] == [EVAL_TASK]
  names = finalize.register_output("synth_distill_test", str(out))
  try:
    assert names == ["synth_distill_test_zs_noopt"]
    ds = seqio.get_mixture_or_task(names[0]).get_dataset(None, split="train", shuffle=False)
    targets = sorted(ex["targets_pretokenized"].decode() for ex in ds.as_numpy_iterator())
    assert targets == ["A banana.", "A carrot.", "I won't."]
    model_dir = tmp_path / "model"
    assert main(["train", f"--gin_file={TINY}", f"--model_dir={model_dir}", f"--gin.MIXTURE_OR_TASK_NAME='{names[0]}'",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 160, 'targets': 16}", "--gin.TRAIN_STEPS=2",
                 "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_MIXTURES=None"]) == 0
    metrics = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and all(m["loss"] > 0 for m in metrics)
  finally:
    for n in names:
      seqio.TaskRegistry.remove(n)


def test_register_output_needs_a_finished_run(tmp_path):
  with pytest.raises(UserError, match="no finished `itjax data` run"):
    finalize.register_output("nothing", str(tmp_path))


def test_register_output_of_a_run_without_examples_names_it(tmp_path, capsys):
  inp = _write(tmp_path / "in.jsonl", [{"id": "a", "instruction": "Name a fruit."}])
  srv = FakeTeacher(lambda body, prompt: "I'm sorry, but I can't help with that.")
  out = tmp_path / "refused"
  try:
    assert main(["data", "distill", "--teacher_url", srv.url, "--teacher_model", "fake", "--output_dir", str(out),
                 "--input", inp]) == 0
  finally:
    srv.close()
  assert "wrote 0 examples" in capsys.readouterr().out
  with pytest.raises(UserError, match=rf"{out}: the `itjax data` run holds no examples \(data.jsonl is empty: "
                                      r"0 generated, removed none; see report.json\)"):
    finalize.register_output("nothing_kept", str(out))
  assert "nothing_kept_zs_noopt" not in seqio.TaskRegistry.names()
