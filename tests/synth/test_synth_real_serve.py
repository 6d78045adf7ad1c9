"""End to end against the real `itjax serve` with an untrained tiny model: it writes garbage, so this checks the
plumbing (every stage runs, nothing crashes, every count adds up), not the content."""

import json

from itjax.cli import main
from itjax.synth import finalize
from itjax.synth.common import RunConfig
from itjax.synth.self_instruct import SelfInstruct, SelfInstructConfig
from itjax.synth.teacher import Teacher, TeacherConfig


def _added_up(stage):
  return stage["candidates"] == stage["kept"] + sum(stage["removed"].values())


def test_self_instruct_round_against_itjax_serve(served_tiny_model, tmp_path):
  # One request at a time, each with its own seed: the same garbage every run.
  teacher = Teacher(TeacherConfig(served_tiny_model.url, "tiny", endpoint="completions", concurrency=1,
                                  max_retries=1, backoff=0.01))
  # Garbage passes these loosened filters now and then (a quarter of it starts with a letter), so the later
  # stages run too.
  cfg = SelfInstructConfig(num_instructions=2, max_requests=12, min_words=1, classify_demos=4, instance_demos=1,
                           drop_truncated=False)
  run = RunConfig(str(tmp_path / "si"), max_tokens=24, temperature=1.0, max_consecutive_failures=100)
  report = SelfInstruct(teacher, run, cfg)()
  print(finalize.format_report(report))
  ins, clf, inst = (report["stages"][k] for k in ("instructions", "classify", "instances"))
  assert "instructions: requests" in finalize.format_report(report)
  assert ins["requests"] + ins["failed_requests"] == 12 or ins["kept"] >= 2
  assert _added_up(ins) and ins["candidates"] >= ins["requests"]
  assert clf["classification"] + clf["generation"] == clf["instructions"] == ins["kept"] >= 1
  assert inst["instructions"] + inst["failed_requests"] == ins["kept"] and _added_up(inst)
  assert report["final"]["written"] == inst["kept"] == len((tmp_path / "si" / "data.jsonl").read_text().splitlines())
  assert report["teacher_requests"]["requests"] == (ins["requests"] + clf["instructions"] + inst["instructions"]
                                                    + report["teacher_requests"]["retries"]
                                                    + ins["failed_requests"] + inst["failed_requests"])


def test_evol_instruct_round_against_itjax_serve(served_tiny_model, tmp_path, capsys):
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in ["Explain rain.", "Name a fruit.",
                                                                         "Add 2 and 3."]))
  out = tmp_path / "evol"
  assert main(["data", "evol_instruct", "--teacher_url", served_tiny_model.url, "--teacher_model", "tiny",
               "--output_dir", str(out), "--input", str(inp), "--rounds", "2", "--max_tokens", "24",
               "--concurrency", "3", "--keep_truncated", "--retry_backoff", "0.01"]) == 0
  printed = capsys.readouterr().out
  assert "round_1: evolved 3" in printed and "round_2: evolved 3" in printed
  report = json.loads((out / "report.json").read_text())
  kept = 0
  for r in ("round_1", "round_2"):
    st = report["stages"][r]
    assert st["evolved"] == 3 == st["kept"] + sum(st["removed"].values()) and st["failed_requests"] == 0
    kept += st["kept"]
  assert report["final"]["generated"] == kept
  assert report["final"]["written"] == len((out / "data.jsonl").read_text().splitlines())
