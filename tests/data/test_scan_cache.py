"""JSONL scan results kept on disk: a second source over the same files does not read them, a changed file or
setting is scanned again, and the cache can be turned off."""

import json
import os

import pytest

from itjax.data import jsonl, scan_cache


@pytest.fixture()
def cache(tmp_path, monkeypatch):
  root = tmp_path / "cache"
  monkeypatch.setenv(scan_cache.ENV, str(root))
  return root


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _rows(n, bad=0):
  rows = [{"prompt": f"Review {i}: {'good' if i % 2 else 'bad'} film.", "completion": "yes" if i % 2 else "no"}
          for i in range(n)]
  return rows + [{"prompt": "no completion"}] * bad


def _source(path, **kw):
  kw.setdefault("splits", {"train": 0.8, "test": 0.2})
  return jsonl.jsonl_source([path], "prompt_completion", **kw)


def _counting_scan(monkeypatch):
  """Counts the full reads of files (jsonl._scan calls)."""
  calls = []
  real = jsonl._scan

  def scan(path, *args, **kwargs):
    calls.append(path)
    return real(path, *args, **kwargs)

  monkeypatch.setattr(jsonl, "_scan", scan)
  return calls


def test_second_source_reads_the_stored_report(tmp_path, cache, monkeypatch):
  path = _write(tmp_path / "d.jsonl", _rows(50, bad=3))
  first = _source(path, on_error="skip", options="from_answers")
  counts = {s: first.num_input_examples(s) for s in ("train", "test")}
  assert sum(counts.values()) == 50 and first.options_of(path) == ("no", "yes")
  assert len(list(cache.iterdir())) == 4  # the report, the derived answers, where each split's lines are
  calls = _counting_scan(monkeypatch)
  second = _source(path, on_error="skip", options="from_answers")
  assert {s: second.num_input_examples(s) for s in ("train", "test")} == counts
  assert second.options_of(path) == ("no", "yes")
  assert second.skipped == first.skipped and sum(first.skipped.values()) == 3
  assert second.reports[path] == first.reports[path]
  assert calls == []  # nothing read again
  # ...and reading the data reads (and checks) just the split's lines, where the first scan found them.
  assert len(list(second.get_dataset("train").as_numpy_iterator())) == counts["train"]
  assert calls == []


def test_changed_file_or_setting_is_scanned_again(tmp_path, cache, monkeypatch):
  path = _write(tmp_path / "d.jsonl", _rows(40))
  n = _source(path).num_input_examples("train")
  calls = _counting_scan(monkeypatch)
  assert _source(path, splits={"train": 0.5, "test": 0.5}).num_input_examples("train") != n  # new ratios
  assert _source(path, split_seed=1).num_input_examples("train") >= 0  # new seed
  assert len(calls) == 2
  _write(tmp_path / "d.jsonl", _rows(80))
  st = os.stat(path)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert _source(path).num_input_examples("train") > n  # the new lines are counted
  assert len(calls) == 3


def test_off_and_unwritable_cache_still_scan(tmp_path, monkeypatch):
  path = _write(tmp_path / "d.jsonl", _rows(20))
  monkeypatch.setenv(scan_cache.ENV, "off")
  assert _source(path).num_input_examples("train") > 0
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  monkeypatch.setenv(scan_cache.ENV, str(blocker / "cache"))
  assert _source(path).num_input_examples("train") > 0  # the write fails quietly; the scan result is used


def test_callable_group_key_is_not_cached(tmp_path, cache):
  path = _write(tmp_path / "d.jsonl", _rows(20))
  _source(path, group_key=lambda obj: obj["prompt"]).num_input_examples("train")
  assert not cache.exists() or not list(cache.iterdir())
