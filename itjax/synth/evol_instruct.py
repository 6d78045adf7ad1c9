"""Evol-Instruct (Xu et al., 2023, WizardLM): make instructions harder, round after round, with the teacher.

Each round gives every instruction in the pool one operation, drawn at random: an in-depth rewrite (add
constraints, deepen, concretize, increase reasoning steps, complicate the input) or an in-breadth creation (a new
instruction on a rarer topic). The teacher then answers the evolved instruction. An evolution fails (and the
instruction goes back to the pool unchanged for the next round) when the evolved instruction adds no new
information (a near copy; optionally also judged "Equal" by the teacher), copies the rewriting prompt's markers,
or was cut off, or when the answer is a refusal, degenerate or cut off. Kept evolutions become training data.

Work is journaled per (round, instruction) in evolutions.jsonl. An instruction whose request failed sits out the
following rounds of this run; the next run retries it, so lineages stay consistent when a run resumes.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

from itjax.errors import UserError
from itjax.synth import filters, prompts
from itjax.synth.common import Run, RunConfig
from itjax.synth.inputs import read_items
from itjax.synth.progress import run_pending
from itjax.synth.teacher import Teacher


@dataclasses.dataclass(frozen=True)
class EvolConfig:
  """Evol-Instruct's own settings: the starting instructions, how many rounds, which operations."""

  input: str
  rounds: int = 4
  ops: tuple[str, ...] = prompts.EVOL_OPS
  judge_equal: bool = False  # also ask the teacher whether the evolved instruction equals the original
  max_items: int | None = None
  drop_truncated: bool = True

  def __post_init__(self):
    bad = [o for o in self.ops if o not in prompts.EVOL_OPS]
    if bad or not self.ops:
      raise UserError(f"--ops: unknown operation(s) {bad}; choose from {', '.join(prompts.EVOL_OPS)}")
    if self.rounds < 1:
      raise UserError(f"--rounds must be >= 1, got {self.rounds}")


class EvolInstruct:
  """One Evol-Instruct run in an output directory (resumes what is there)."""

  def __init__(self, teacher: Teacher, run: RunConfig, cfg: EvolConfig):
    self.cfg, self.teacher = cfg, teacher
    self.items = read_items(cfg.input)[: cfg.max_items]
    settings = {**dataclasses.asdict(cfg), **dataclasses.asdict(run)}
    settings.pop("mixins")
    self.run = Run("evol_instruct", run, teacher, settings)

  def _evolve(self, key: str, entry: dict, r: int) -> list[dict]:
    rng = random.Random(f"{self.run.cfg.seed}-evol-{key}")
    op = rng.choice(self.cfg.ops)
    sampling = self.run.sampling()
    evolved, cut = self.teacher.generate(prompts.evol_prompt(op, entry["prompt"]), **sampling,
                                         parse=lambda cs: prompts.parse_evolved(cs[0]))
    reason = "truncated" if cut and self.cfg.drop_truncated else None
    if reason is None and filters.copied_marker(evolved):
      reason = "copied_marker"
    if reason is None and op != "breadth" and filters.no_new_information(evolved, entry["prompt"]):
      reason = "no_new_information"
    answer = None
    if reason is None:
      c = self.teacher.generate([{"role": "user", "content": evolved}], **sampling)[0]
      answer = c.text.strip()
      reason = filters.response_reason(answer, c.finish_reason, drop_truncated=self.cfg.drop_truncated,
                                       instruction=evolved)
    if reason is None and self.cfg.judge_equal and op != "breadth":
      equal = self.teacher.generate(prompts.EQUAL_HEADER.format(a=entry["prompt"], b=evolved), max_tokens=8,
                                    temperature=0.0, parse=lambda cs: prompts.parse_equal(cs[0]))
      reason = "no_new_information" if equal else None
    return [{"key": key, "round": r, "id": entry["id"], "op": op, "parent": entry["prompt"], "instruction": evolved,
             "output": answer, "kept": reason is None, "reason": reason}]

  def __call__(self) -> dict[str, Any]:
    """Runs (or resumes) every round, then writes data.jsonl and report.json; returns the report."""
    journal = self.run.journal("evolutions.jsonl")
    pool = [{"id": it.id, "prompt": it.prompt} for it in self.items]
    for r in range(1, self.cfg.rounds + 1):
      items = [(f"r{r}/{e['id']}", e) for e in pool]
      run_pending(items, lambda key, e, r=r: self._evolve(key, e, r), journal, self.run.progress,
                          f"round {r}", workers=self.teacher.cfg.concurrency, total=len(items),
                          initial=sum(k in journal.keys for k, _ in items),
                          max_consecutive_failures=self.run.cfg.max_consecutive_failures)
      by_key = {rec["key"]: rec for rec in journal.records if rec["round"] == r}
      nxt = []
      for key, e in items:
        rec = by_key.get(key)
        if rec is None:  # its request failed: it sits out the rest of this run
          continue
        nxt.append({"id": e["id"], "prompt": rec["instruction"] if rec["kept"] else e["prompt"]})
      pool = nxt
    rows = [{"instruction": rec["instruction"], "input": "", "output": rec["output"],
             "provenance": self.run.provenance(id=rec["key"], round=rec["round"], op=rec["op"], root=rec["id"])}
            for rec in journal.records if rec["kept"]]
    stages = {}
    for r in range(1, self.cfg.rounds + 1):
      recs = [rec for rec in journal.records if rec["round"] == r]
      stages[f"round_{r}"] = {
          "evolved": len(recs),
          "failed_requests": self.run.progress.counter(f"round {r}").get("failed_requests", 0),
          "kept": sum(rec["kept"] for rec in recs),
          "ops": dict(Counter(rec["op"] for rec in recs)),
          "removed": dict(Counter(rec["reason"] for rec in recs if not rec["kept"]))}
    return self.run.finish(rows, stages)
