"""Journals survive a torn write, refuse a corrupted one; the progress file refuses another pipeline's directory;
the worker pool journals results, counts teacher failures and stops after too many in a row."""

import json
import threading

import pytest

from itjax.errors import UserError
from itjax.synth.progress import Journal, Progress, run_pending
from itjax.synth.teacher import TeacherError


def test_journal_appends_and_reloads(tmp_path):
  j = Journal(str(tmp_path / "j.jsonl"))
  j.append([{"key": "a", "v": 1}, {"key": "b", "v": "é"}])
  j.close()
  again = Journal(str(tmp_path / "j.jsonl"))
  assert again.records == [{"key": "a", "v": 1}, {"key": "b", "v": "é"}] and again.keys == {"a", "b"}


def test_journal_cuts_a_torn_last_line(tmp_path, caplog):
  path = tmp_path / "j.jsonl"
  path.write_text('{"key": "a"}\n{"key": "b", "half')  # killed in the middle of a write
  j = Journal(str(path))
  assert j.keys == {"a"} and "torn last line" in caplog.text
  j.append([{"key": "b"}])
  j.close()
  assert path.read_text() == '{"key": "a"}\n{"key": "b"}\n'


def test_journal_refuses_a_corrupted_line(tmp_path):
  path = tmp_path / "j.jsonl"
  path.write_text('{"key": "a"}\nnot json\n{"key": "c"}\n')
  with pytest.raises(UserError, match=r"j.jsonl:2: not a JSON line"):
    Journal(str(path))
  path.write_text('{"key": "a"}\n{"no_key": 1}\n')
  with pytest.raises(UserError, match=r"j.jsonl:2: field 'key': missing"):
    Journal(str(path))


def test_progress_file_refuses_another_pipeline(tmp_path, caplog):
  p = Progress(str(tmp_path), "distill", {"input": "a.jsonl", "rounds": (1, 2)})
  p.add("answers", "failed_requests", 2)
  p.save()
  again = Progress(str(tmp_path), "distill", {"input": "b.jsonl", "rounds": (1, 2)})
  assert again.counter("answers") == {"failed_requests": 2} and again.state["runs"] == 2
  assert "changed settings: input: 'a.jsonl' -> 'b.jsonl'" in caplog.text and "rounds" not in caplog.text
  with pytest.raises(UserError, match="holds an `itjax data distill` run, not self_instruct"):
    Progress(str(tmp_path), "self_instruct", {})
  assert json.loads((tmp_path / "progress.json").read_text())["command"] == "distill"


def test_run_pending_skips_done_items_and_counts_failures(tmp_path):
  j = Journal(str(tmp_path / "j.jsonl"))
  j.append([{"key": "0"}])
  p = Progress(str(tmp_path), "x", {})
  seen, lock = [], threading.Lock()

  def work(key, payload):
    with lock:
      seen.append(key)
    if payload % 3 == 2:
      raise TeacherError("HTTP 500")
    return [{"key": key, "square": payload * payload}]

  counts = run_pending(((str(i), i) for i in range(10)), work, j, p, "stage", workers=3)
  assert sorted(seen, key=int) == [str(i) for i in range(1, 10)]  # "0" was done
  assert counts == {"done": 6, "failed_requests": 3}
  assert p.counter("stage") == {"failed_requests": 3}
  assert sorted(j.keys, key=int) == ["0", "1", "3", "4", "6", "7", "9"]


def test_run_pending_stops_after_consecutive_failures(tmp_path):
  j = Journal(str(tmp_path / "j.jsonl"))
  p = Progress(str(tmp_path), "x", {})

  def work(key, payload):
    raise TeacherError("HTTP 503 from http://teacher/v1/completions: overloaded")

  with pytest.raises(UserError, match=r"stage: 4 teacher requests failed in a row \(last: HTTP 503.*run the same "
                                      r"command to resume"):
    run_pending(((str(i), i) for i in range(100)), work, j, p, "stage", workers=2, max_consecutive_failures=4)
  assert json.loads((tmp_path / "progress.json").read_text())["counters"]["stage"]["failed_requests"] >= 4


def test_run_pending_pulls_items_lazily_and_commits_in_order(tmp_path):
  j = Journal(str(tmp_path / "j.jsonl"))
  p = Progress(str(tmp_path), "x", {})
  state = {"total": 0}

  def items():  # stops once the committed total reaches 10: needs results before the next item
    k = 0
    while state["total"] < 10:
      yield f"k{k}", k
      k += 1

  def commit(key, result):
    state["total"] += result
    return [{"key": key, "n": result}], 1

  run_pending(items(), lambda key, k: 3, j, p, "stage", workers=1, commit=commit)
  # Items come while fewer than 10 are committed; at most 2 * workers are in flight when it is reached.
  assert 12 <= state["total"] <= 15 and len(j.records) == state["total"] // 3
