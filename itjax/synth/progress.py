"""Resumable work: append-only JSONL journals of finished items, a progress file, and a bounded worker pool.

A stage's unit of work (one teacher request, one instruction) ends in one `Journal.append`: whole lines in one
write, flushed and fsynced, so a killed run leaves at most a torn last line, which the next open cuts off. The
journal is the truth: an item whose key is in it is done and never redone; an item in flight when the run died is
simply not there, and is done again. `progress.json` (replaced atomically) holds the running counts that the
journals cannot (failed requests), the settings of the run, to refuse resuming a different pipeline, and (`live`)
the teacher's counts of this run so far, retries by reason included.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm

from itjax.errors import UserError
from itjax.synth.teacher import TeacherError

logger = logging.getLogger("itjax")
PROGRESS = "progress.json"


class Journal:
  """Records (dicts with a unique "key") appended as JSON lines; loading repairs a torn last line."""

  def __init__(self, path: str):
    self.path = path
    self.records: list[dict] = []
    self._lock = threading.Lock()
    if os.path.exists(path):
      self._load()
    self.keys = {r["key"] for r in self.records}
    self._f = open(path, "a", encoding="utf-8")

  def _load(self) -> None:
    with open(self.path, "rb") as f:
      data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
      logger.warning("%s: cut a torn last line (%d bytes) left by an interrupted run", self.path, len(data) - end)
      with open(self.path, "r+b") as f:
        f.truncate(end)
    for lineno, line in enumerate(data[:end].splitlines(), start=1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{self.path}:{lineno}: not a JSON line ({e.msg}); this journal was edited or corrupted, "
                        "fix or delete the line to resume") from None
      if not isinstance(rec, dict) or "key" not in rec:
        raise UserError(f"{self.path}:{lineno}: field 'key': missing; not a journal written by itjax data")
      self.records.append(rec)

  def append(self, records: list[dict]) -> None:
    """Appends records atomically with respect to interruption (one write, then fsync)."""
    if not records:
      return
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with self._lock:
      self._f.write(text)
      self._f.flush()
      os.fsync(self._f.fileno())
      self.records.extend(records)
      self.keys.update(r["key"] for r in records)

  def close(self) -> None:
    self._f.close()


class Progress:
  """`<output_dir>/progress.json`: the pipeline and its settings, per-stage counters, when last updated."""

  def __init__(self, output_dir: str, command: str, settings: dict[str, Any],
               live: Callable[[], dict[str, Any]] | None = None):
    """`live()` gives fields refreshed on every save (e.g. the teacher's counts of this run)."""
    self.path = os.path.join(output_dir, PROGRESS)
    self._lock = threading.Lock()
    self._live = live
    settings = json.loads(json.dumps(settings))  # as stored: tuples are lists
    self.state: dict[str, Any] = {"command": command, "settings": settings, "counters": {}, "runs": 0}
    if os.path.exists(self.path):
      try:
        with open(self.path, encoding="utf-8") as f:
          old = json.load(f)
      except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{self.path}: unreadable progress file ({e}); delete it to resume from the journals") from None
      if old.get("command") != command:
        raise UserError(f"{output_dir} holds an `itjax data {old.get('command')}` run, not {command}; "
                        "use another --output_dir")
      changed = sorted(k for k in settings if k in old.get("settings", {}) and old["settings"][k] != settings[k])
      if changed:
        logger.warning("resuming %s with changed settings: %s", output_dir,
                       ", ".join(f"{k}: {old['settings'][k]!r} -> {settings[k]!r}" for k in changed))
      self.state["counters"] = old.get("counters", {})
      self.state["runs"] = old.get("runs", 0)
    self.state["runs"] += 1
    self.save()

  def add(self, stage: str, key: str, n: int = 1) -> None:
    with self._lock:
      c = self.state["counters"].setdefault(stage, {})
      c[key] = c.get(key, 0) + n

  def counter(self, stage: str) -> dict[str, int]:
    return dict(self.state["counters"].get(stage, {}))

  def save(self, **fields: Any) -> None:
    live = self._live() if self._live else {}
    with self._lock:
      self.state.update(live, **fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
      tmp = self.path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(self.state, f, indent=1)
      os.replace(tmp, self.path)


def run_pending(items: Iterable[tuple[str, Any]], work: Callable[[str, Any], Any], journal: Journal,
                progress: Progress, stage: str, *, workers: int, total: int | None = None, initial: int = 0,
                commit: Callable[[str, Any], tuple[list[dict], int]] | None = None,
                max_consecutive_failures: int = 10) -> Counter:
  """Runs `work(key, payload)` for items whose key is not in the journal, `workers` at a time, journaling results.

  `items` is consumed lazily (one more whenever a worker is free), so a generator can build the next item from
  what finished so far. `commit(key, result)` runs in this thread, one result at a time (so it may filter against
  shared state), and returns the records to journal and how far to advance the progress bar; by default `work`
  returns the records and the bar advances by one. A `TeacherError` is counted ("failed_requests") and logged;
  `max_consecutive_failures` in a row stop the stage with a UserError (the journal keeps everything finished).
  Returns this run's counts.
  """
  counts: Counter = Counter()
  consecutive, last_error = 0, ""
  it: Iterator[tuple[str, Any]] = iter(items)
  bar = tqdm(total=total, initial=initial, desc=stage, unit="item", disable=None, leave=False)
  pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"itjax-{stage}")
  running: dict[cf.Future, str] = {}

  def fill() -> None:
    while len(running) < 2 * workers:
      try:
        key, payload = next(it)
      except StopIteration:
        return
      if key in journal.keys or key in running.values():
        continue
      running[pool.submit(work, key, payload)] = key

  try:
    fill()
    while running:
      done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
      for fut in done:
        key = running.pop(fut)
        try:
          result = fut.result()
        except TeacherError as e:
          counts["failed_requests"] += 1
          progress.add(stage, "failed_requests")
          consecutive, last_error = consecutive + 1, str(e)
          logger.warning("%s: %s failed: %s", stage, key, e)
          if consecutive >= max_consecutive_failures:
            progress.save()
            where = os.path.dirname(progress.path)
            raise UserError(f"{stage}: {consecutive} teacher requests failed in a row (last: {last_error}); "
                            f"progress is saved in {where}: run the same command to resume") from None
          continue
        consecutive = 0
        records, advance = commit(key, result) if commit else (result, 1)
        journal.append(records)
        counts["done"] += 1
        bar.update(advance)
      progress.save()
      fill()
  except BaseException:  # interrupted or stopped: requests in flight are dropped, not journaled
    pool.shutdown(wait=False, cancel_futures=True)
    raise
  finally:
    bar.close()
  pool.shutdown(wait=True)
  return counts
