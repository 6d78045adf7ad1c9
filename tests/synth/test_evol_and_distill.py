"""Evol-Instruct and distillation against scripted teachers: each elimination rule, failed evolutions returned to
the pool, chain of thought, errors retried and reported, counts that add up."""

import json

from fake_teacher import FakeTeacher, Raw
from scripted import evol_teacher

from itjax.cli import main
from itjax.data import jsonl

INSTRUCTIONS = [
    {"instruction": "Explain how tides work.", "output": "ignored"},
    {"instruction": "Name three kinds of clouds.", "input": ""},
    {"instruction": "Summarize the text.", "input": "Copyable text about bees."},  # comes back unchanged
    {"prompt": "Give one tip for sleeping better, MARKER."},  # the rewrite copies the prompt's heading
    {"instruction": "Describe a REFUSE situation."},  # the answer is a refusal
    {"instruction": "Write a DEGEN line."},  # the answer is degenerate
]


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def _evol(url, inp, out, *extra):
  return main(["data", "evol_instruct", "--teacher_url", url, "--teacher_model", "fake", "--output_dir", str(out),
               "--input", inp, "--retry_backoff", "0.01", "--max_retries", "1", *extra])


def test_evol_instruct_rounds(tmp_path, capsys):
  inp = _write(tmp_path / "in.jsonl", INSTRUCTIONS)
  srv = FakeTeacher(evol_teacher(refuse=("REFUSE",), copy=("Copyable",), marker=("MARKER",), degenerate=("DEGEN",)))
  out = tmp_path / "evol"
  try:
    assert _evol(srv.url, inp, out, "--rounds", "2", "--ops", "constraints", "reasoning") == 0
  finally:
    srv.close()
  report = json.loads((out / "report.json").read_text())
  r1, r2 = report["stages"]["round_1"], report["stages"]["round_2"]
  assert r1["evolved"] == r2["evolved"] == 6
  assert r1["removed"] == {"no_new_information": 1, "copied_marker": 1, "refusal": 1, "degenerate": 1}
  assert r1["kept"] == 2 and r2["kept"] == 2 and r1["evolved"] == r1["kept"] + sum(r1["removed"].values())
  recs = {r["key"]: r for r in _lines(out / "evolutions.jsonl")}
  # Kept evolutions are evolved again; failed ones go back to the pool and round 2 starts from the original.
  tides1, tides2 = recs["r1/in-1"], recs["r2/in-1"]
  assert tides1["kept"] and tides2["parent"] == tides1["instruction"] and tides2["instruction"].startswith(
      tides1["instruction"])
  assert recs["r2/in-3"]["parent"] == "Summarize the text.\n\nCopyable text about bees."
  assert recs["r2/in-5"]["parent"] == "Describe a REFUSE situation."
  rows = list(jsonl.read_jsonl(out / "data.jsonl", "alpaca"))
  assert len(rows) == report["final"]["written"] == 4
  data = _lines(out / "data.jsonl")
  assert {d["provenance"]["round"] for d in data} == {1, 2}
  assert {d["provenance"]["op"] for d in data} <= {"constraints", "reasoning"}
  assert "round_1: evolved 6" in capsys.readouterr().out


def test_evol_breadth_and_judge(tmp_path):
  (tmp_path / "in.txt").write_text("Explain how tides work.\nName three kinds of clouds.\n")
  inp = str(tmp_path / "in.txt")
  srv = FakeTeacher(evol_teacher())
  out = tmp_path / "evol"
  try:
    assert _evol(srv.url, inp, out, "--rounds", "1", "--ops", "breadth") == 0
    assert _evol(srv.url, inp, tmp_path / "judged", "--rounds", "1", "--ops", "deepen", "--judge_equal") == 0
  finally:
    srv.close()
  data = _lines(out / "data.jsonl")
  assert len(data) == 2 and all(d["instruction"].startswith("Invent a riddle") for d in data)
  judged = [b for b in srv.requests if "Answer Equal or Not equal" in json.dumps(b)]
  assert len(judged) == 2 and len(_lines(tmp_path / "judged" / "data.jsonl")) == 2


def test_evol_teacher_errors_are_reported_and_retried_on_resume(tmp_path):
  inp = _write(tmp_path / "in.jsonl", INSTRUCTIONS[:2])
  script = evol_teacher()
  broken = {"on": True}

  def respond(body, prompt):
    if broken["on"] and "tides" in prompt:
      return Raw(500, "down")
    return script(body, prompt)

  srv = FakeTeacher(respond)
  out = tmp_path / "evol"
  try:
    assert _evol(srv.url, inp, out, "--rounds", "2") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["round_1"]["failed_requests"] == 1
    assert report["stages"]["round_1"]["evolved"] == report["stages"]["round_2"]["evolved"] == 1
    broken["on"] = False  # the teacher recovers: a rerun finishes the item's rounds, and only those
    n = len(srv.requests)
    assert _evol(srv.url, inp, out, "--rounds", "2") == 0
    assert len(srv.requests) - n == 4  # 2 rounds x (rewrite + answer) for the one item
  finally:
    srv.close()
  keys = [r["key"] for r in _lines(out / "evolutions.jsonl")]
  assert sorted(keys) == ["r1/in-1", "r1/in-2", "r2/in-1", "r2/in-2"]


def test_distill_with_chain_of_thought(tmp_path):
  inp = _write(tmp_path / "in.jsonl", [{"instruction": "What is 2 + 3?"}, {"instruction": "What is 4 + 4?"},
                                       {"instruction": "Say something rude.", "context": "about a friend"},
                                       {"instruction": "Count to a million."}, {"instruction": "What is 7 - 2?"}])

  def respond(body, prompt):
    if "rude" in prompt:
      return "I'm sorry, I can't help with that."
    if "million" in prompt:
      return "1, 2, 3, 4, 5, 6, 7, 8", "length"
    if "7 - 2" in prompt:
      return "It is five."  # no final-answer line
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "step by step" in body["messages"][-1]["content"]
    a, b = map(int, prompt.split("What is ")[1].split("?")[0].split(" + "))
    return f"We add {a} and {b}.\nSo the answer is {a + b}."

  srv = FakeTeacher(respond)
  out = tmp_path / "distill"
  try:
    assert main(["data", "distill", "--teacher_url", srv.url, "--teacher_model", "fake", "--output_dir", str(out),
                 "--input", inp, "--cot", "--system_prompt", "Be brief.", "--retry_backoff", "0.01"]) == 0
  finally:
    srv.close()
  report = json.loads((out / "report.json").read_text())
  assert report["stages"]["answers"] == {"instructions": 5, "answered": 5, "failed_requests": 0, "kept": 2,
                                         "removed": {"refusal": 1, "truncated": 1, "no_final_answer": 1}}
  rows = _lines(out / "data.jsonl")
  assert [r["output"] for r in rows] == ["We add 2 and 3.\nSo the answer is 5.", "We add 4 and 4.\nSo the answer is 8."]
  assert rows[0]["instruction"] == "What is 2 + 3?" and rows[0]["provenance"]["cot"] is True


def test_distill_multi_turn_dialogues(tmp_path):
  inp = _write(tmp_path / "in.jsonl", [{"instruction": "Tell me about owls."}, {"instruction": "Tell me about bats."}])

  def respond(body, prompt):
    if "The user's next message" in prompt:
      n = prompt.count("Assistant:")
      return f"User: And what else about {'bats' if 'bats' in prompt else 'owls'}, part {n}?"
    last = body["messages"][-1]["content"]
    if "bats, part 1" in last:
      return "I'm sorry, I can't say more."  # the second turn of the bats dialogue fails: it stops after one turn
    return f"Answer to: {last}"

  srv = FakeTeacher(respond)
  out = tmp_path / "chat"
  try:
    assert main(["data", "distill", "--teacher_url", srv.url, "--teacher_model", "fake", "--output_dir", str(out),
                 "--input", inp, "--turns", "3", "--system_prompt", "Be kind."]) == 0
  finally:
    srv.close()
  report = json.loads((out / "report.json").read_text())
  assert report["final"]["format"] == "chat"
  assert report["stages"]["answers"]["assistant_turns"] == 4 and report["stages"]["answers"]["shortened"] == {
      "refusal": 1}
  owls, bats = _lines(out / "data.jsonl")
  assert [m["role"] for m in owls["messages"]] == ["system"] + ["user", "assistant"] * 3
  assert owls["messages"][3]["content"] == "And what else about owls, part 1?"
  assert owls["messages"][4]["content"] == "Answer to: And what else about owls, part 1?"
  assert [m["role"] for m in bats["messages"]] == ["system", "user", "assistant"]
  assert len(list(jsonl.read_jsonl(out / "data.jsonl", "chat"))) == 2
