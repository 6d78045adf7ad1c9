"""Self-Instruct against a scripted teacher: every stage's counts add up, server errors and malformed answers are
retried and reported, the output reads back as Alpaca JSONL, and an interrupted run resumes without duplicates."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fake_teacher import FakeTeacher, Raw
from scripted import self_instruct_teacher

from itjax.cli import main
from itjax.data import jsonl
from itjax.synth.inputs import load_seed_tasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(url, out, *extra):
  return ["data", "self_instruct", "--teacher_url", url, "--teacher_model", "fake", "--endpoint", "completions",
          "--output_dir", str(out), "--retry_backoff", "0.01", "--max_retries", "2", *extra]


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _check_counts(report, data_path):
  ins, clf, inst = (report["stages"][k] for k in ("instructions", "classify", "instances"))
  fin = report["final"]
  assert ins["candidates"] == ins["kept"] + sum(ins["removed"].values())
  assert clf["classification"] + clf["generation"] == clf["instructions"] == ins["kept"]
  assert inst["candidates"] == inst["kept"] + sum(inst["removed"].values())
  assert fin["generated"] == inst["kept"]
  assert fin["written"] == fin["generated"] + sum(fin["mixed_in"].values()) - sum(fin["removed"].values())
  assert len(_lines(data_path)) == fin["written"]


def test_self_instruct_round(tmp_path, capsys):
  faults = {0: Raw(500, "server exploded"), 3: Raw(200, "{not json"), 5: Raw(200, '{"choices": []}')}
  srv = FakeTeacher(self_instruct_teacher(faults, always_fail=("Plan",)))
  out = tmp_path / "si"
  try:
    assert main(_args(srv.url, out, "--num_instructions", "8", "--concurrency", "3")) == 0
  finally:
    srv.close()
  printed = capsys.readouterr().out
  assert "itjax data self_instruct" in printed and "instructions:" in printed and "wrote" in printed
  report = json.loads((out / "report.json").read_text())
  _check_counts(report, out / "data.jsonl")
  ins, clf, inst = (report["stages"][k] for k in ("instructions", "classify", "instances"))
  assert ins["kept"] == 8
  for reason in ("blacklist", "too_short", "similar", "invalid_start"):
    assert ins["removed"][reason] >= 1, reason
  assert clf["classification"] >= 1 and clf["generation"] >= 1
  assert inst["removed"]["same_as_input"] >= 1
  # Faults: retried (the run finished), and "Plan ..." tasks, whose instance requests always fail, are reported.
  plans = sum(c["instruction"].startswith("Plan") for r in _lines(out / "instructions.jsonl")
              for c in r["candidates"] if c["kept"])
  assert plans >= 1 and inst["failed_requests"] == plans and inst["instructions"] == ins["kept"] - plans
  assert report["teacher_requests"]["retries"] >= 3 + 2 * plans
  # Every retry is counted by its reason, in report.json, progress.json and the console.
  reasons = report["teacher_requests"]["retry_reasons"]
  assert reasons["http_500"] >= 1 + 2 * plans and reasons["malformed"] >= 2
  assert sum(reasons.values()) == report["teacher_requests"]["retries"]
  assert report["teacher_requests"]["failure_reasons"] == {"http_500": plans}
  assert json.loads((out / "progress.json").read_text())["teacher_requests"] == report["teacher_requests"]
  assert f"retries (http_500 {reasons['http_500']}, malformed {reasons['malformed']})" in printed
  rows = list(jsonl.read_jsonl(out / "data.jsonl", "alpaca"))
  assert len(rows) == report["final"]["written"] > 0
  first = _lines(out / "data.jsonl")[0]
  assert first["provenance"]["method"] == "self_instruct"
  assert first["provenance"]["teacher"] == {"model": "fake", "endpoint": "completions"}
  seeds = {s.instruction for s in load_seed_tasks()}
  assert not seeds & {r["instruction"] for r in _lines(out / "data.jsonl")}


def test_finished_run_resumes_without_new_requests(tmp_path, capsys):
  srv = FakeTeacher(self_instruct_teacher())
  out = tmp_path / "si"
  try:
    assert main(_args(srv.url, out, "--num_instructions", "4")) == 0
    before, data = len(srv.requests), (out / "data.jsonl").read_text()
    assert main(_args(srv.url, out, "--num_instructions", "4")) == 0
    assert len(srv.requests) == before and (out / "data.jsonl").read_text() == data
    # Asking for more extends the run: only the new instructions are classified and given instances.
    assert main(_args(srv.url, out, "--num_instructions", "6")) == 0
  finally:
    srv.close()
  report = json.loads((out / "report.json").read_text())
  assert report["stages"]["instructions"]["kept"] == 6
  keys = [r["key"] for r in _lines(out / "instances.jsonl")]
  assert len(keys) == len(set(keys)) == 6


def _wait_for_lines(path, n, proc, timeout=120):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"the run ended before it could be interrupted: {proc.stderr.read()}")
    if os.path.exists(path) and sum(1 for _ in open(path)) >= n:
      return
    time.sleep(0.05)
  raise AssertionError(f"{path}: fewer than {n} lines after {timeout} s")


@pytest.mark.parametrize("kill_in", ["instructions.jsonl", pytest.param("instances.jsonl", marks=pytest.mark.slow)])
def test_interrupted_run_resumes_without_duplicates(tmp_path, kill_in):
  srv = FakeTeacher(self_instruct_teacher(), delay=0.05)
  out = tmp_path / "si"
  args = _args(srv.url, out, "--num_instructions", "16", "--concurrency", "2")
  env = {**os.environ, "PYTHONPATH": REPO}
  try:
    proc = subprocess.Popen([sys.executable, "-m", "itjax.cli", *args], cwd=REPO, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    _wait_for_lines(out / kill_in, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {name: (out / name).read_text() for name in ("instructions.jsonl", "classify.jsonl", "instances.jsonl")
              if (out / name).exists()}
    assert not (out / "report.json").exists()
    requests_before = len(srv.requests)
    assert main(args) == 0
  finally:
    srv.close()
  for name, text in before.items():  # finished work is kept as it was (a torn last line aside)
    assert (out / name).read_text().startswith(text[: text.rfind("\n") + 1])
  for name in ("instructions.jsonl", "classify.jsonl", "instances.jsonl"):
    keys = [r["key"] for r in _lines(out / name)]
    assert len(keys) == len(set(keys)), name
  kept = [c["id"] for r in _lines(out / "instructions.jsonl") for c in r["candidates"] if c["kept"]]
  assert len(kept) == 16 and len(set(kept)) == 16
  assert sorted(r["key"] for r in _lines(out / "instances.jsonl")) == sorted(kept)
  data = _lines(out / "data.jsonl")
  texts = [(r["instruction"], r["input"], r["output"]) for r in data]
  assert len(texts) == len(set(texts))
  report = json.loads((out / "report.json").read_text())
  _check_counts(report, out / "data.jsonl")
  # Nothing finished before the kill was asked again: the resumed run made one request per new journal record.
  done_before = sum(len(t[: t.rfind("\n") + 1].splitlines()) for t in before.values())
  total_work = sum(len(_lines(out / n)) for n in ("instructions.jsonl", "classify.jsonl", "instances.jsonl"))
  assert len(srv.requests) - requests_before == report["teacher_requests"]["requests"] == total_work - done_before


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
  seeds = tmp_path / "seeds.jsonl"
  seeds.write_text(json.dumps({"instruction": "Say hi.", "instances": [{"input": ""}]}) + "\n")
  assert main(_args("http://127.0.0.1:9/v1", tmp_path / "out", "--seed_tasks", str(seeds))) == 2
  assert "seeds.jsonl:1: field 'instances[0].output': missing" in capsys.readouterr().err
  assert main(_args("localhost:8000", tmp_path / "out")) == 2
  assert "--teacher_url must start with http://" in capsys.readouterr().err
  (tmp_path / "out").mkdir(exist_ok=True)
  (tmp_path / "out" / "progress.json").write_text(json.dumps({"command": "distill"}))
  assert main(_args("http://127.0.0.1:9/v1", tmp_path / "out")) == 2
  assert "holds an `itjax data distill` run" in capsys.readouterr().err
  assert main(_args("http://127.0.0.1:9/v1", tmp_path / "o2", "--decontaminate", "proc_add_zs_noop")) == 2
  assert "unknown task or mixture 'proc_add_zs_noop'; did you mean proc_add_zs_noopt" in capsys.readouterr().err
