"""Distillation: the teacher answers a given instruction set, giving SFT data for a smaller student.

Optionally with chain of thought: the teacher is asked to reason step by step and end with "So the answer is
...", and answers without that final line are dropped. Answers that are empty, cut off, refusals or degenerate are
dropped too (`filters.response_reason`). With `turns` > 1 the result is a multi-turn dialogue: the teacher also
writes the user's follow-up messages, and the conversation (chat JSONL, `messages`) keeps every turn up to the
first answer that fails a filter. Work is journaled per instruction in answers.jsonl.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any

from itjax.errors import UserError
from itjax.synth import filters, prompts
from itjax.synth.common import Run, RunConfig
from itjax.synth.inputs import Item, read_items
from itjax.synth.progress import run_pending
from itjax.synth.teacher import Teacher, TeacherError

_FINAL = re.compile(r"so the answer is", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """What to answer and how."""

  input: str
  cot: bool = False
  system_prompt: str | None = None
  max_items: int | None = None
  drop_truncated: bool = True
  turns: int = 1  # assistant turns per example; > 1 writes multi-turn chat data

  def __post_init__(self):
    if self.turns < 1:
      raise UserError(f"--turns must be >= 1, got {self.turns}")


class Distill:
  """One distillation run in an output directory (resumes what is there)."""

  def __init__(self, teacher: Teacher, run: RunConfig, cfg: DistillConfig):
    self.cfg, self.teacher = cfg, teacher
    self.items = read_items(cfg.input)[: cfg.max_items]
    settings = {**dataclasses.asdict(cfg), **dataclasses.asdict(run)}
    settings.pop("mixins")
    self.run = Run("distill", run, teacher, settings)

  def _reply(self, messages: list[dict], first: bool) -> tuple[str, str | None, str | None]:
    """(answer, finish_reason, why it is dropped or None) for the conversation so far."""
    if first and self.cfg.cot:
      messages = [*messages[:-1], {"role": "user", "content": messages[-1]["content"] + prompts.COT_SUFFIX}]
    c = self.teacher.generate(messages, **self.run.sampling())[0]
    answer = c.text.strip()
    reason = filters.response_reason(answer, c.finish_reason, drop_truncated=self.cfg.drop_truncated,
                                     instruction=messages[-1]["content"])
    if reason is None and first and self.cfg.cot and not _FINAL.search(answer):
      reason = "no_final_answer"
    return answer, c.finish_reason, reason

  def _answer(self, key: str, item: Item) -> list[dict]:
    system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
    messages = [{"role": "user", "content": item.prompt}]
    answer, finish, reason = self._reply(system + messages, first=True)
    rec = {"key": key, "instruction": item.instruction, "input": item.input, "output": answer,
           "finish_reason": finish, "kept": reason is None, "reason": reason}
    if self.cfg.turns == 1 or reason is not None:
      return [rec]
    messages.append({"role": "assistant", "content": answer})
    stopped = None
    while len(messages) < 2 * self.cfg.turns and stopped is None:
      try:  # a later turn that fails ends the dialogue; the turns before it are kept
        question = self.teacher.generate(prompts.followup_prompt(messages), **self.run.sampling(),
                                         parse=lambda cs: prompts.parse_followup(cs[0]))
        if filters.copied_marker(question):
          stopped = "bad_followup"
          break
        nxt, _, stopped = self._reply(system + [*messages, {"role": "user", "content": question}], first=False)
      except TeacherError:
        stopped = "failed_request"
        break
      if stopped is None:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": nxt}]
    return [{**rec, "messages": system + messages, "turns": len(messages) // 2, "stopped": stopped}]

  def __call__(self) -> dict[str, Any]:
    """Answers every instruction not answered yet, then writes data.jsonl and report.json; returns the report."""
    journal = self.run.journal("answers.jsonl")
    items = [(it.id, it) for it in self.items]
    run_pending(items, self._answer, journal, self.run.progress, "answers", workers=self.teacher.cfg.concurrency,
                total=len(items), initial=sum(k in journal.keys for k, _ in items),
                max_consecutive_failures=self.run.cfg.max_consecutive_failures)
    order = {k: i for i, (k, _) in enumerate(items)}  # data.jsonl in input order, whatever finished first
    recs = sorted((r for r in journal.records if r["key"] in order), key=lambda r: order[r["key"]])
    kept = [r for r in recs if r["kept"]]
    counts = {"instructions": len(items), "answered": len(recs),
              "failed_requests": self.run.progress.counter("answers").get("failed_requests", 0),
              "kept": len(kept), "removed": dict(Counter(r["reason"] for r in recs if not r["kept"]))}
    if self.cfg.turns > 1:
      rows = [{"messages": r.get("messages") or [{"role": "user", "content": r["instruction"]},
                                                 {"role": "assistant", "content": r["output"]}],
               "provenance": self.run.provenance(id=r["key"], cot=self.cfg.cot, turns=r.get("turns", 1))}
              for r in kept]
      counts["assistant_turns"] = sum(r.get("turns", 1) for r in kept)
      counts["shortened"] = dict(Counter(r["stopped"] for r in kept if r.get("stopped")))
    else:
      rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"],
               "provenance": self.run.provenance(id=r["key"], cot=self.cfg.cot)} for r in kept]
    return self.run.finish(rows, {"answers": counts}, fmt="chat" if self.cfg.turns > 1 else "alpaca")
