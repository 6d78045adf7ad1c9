"""Self-Instruct (Wang et al., 2022): bootstrap instruction data from a small set of seed tasks.

1. instructions: prompt with a mix of seed and generated instructions, parse the teacher's numbered list, drop
   candidates by `filters.instruction_reason` and ROUGE-L > 0.7 against the pool (seeds + kept), until
   `num_instructions` are kept (or `max_requests` were made);
2. classify: is each kept instruction a classification task (few-shot Yes/No);
3. instances: generate examples, output-first for classification tasks (label, then input) and input-first
   otherwise, and drop them by `filters.instance_reasons` (a classification instance's output is a label, which
   may be one character; a generation instance's output must be long enough to be an answer).
Each stage journals its finished work in `output_dir` (instructions.jsonl, classify.jsonl, instances.jsonl), so an
interrupted run resumes where it stopped. The kept instances become data.jsonl with provenance.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

from itjax.errors import UserError
from itjax.synth import filters, prompts
from itjax.synth.common import Run, RunConfig
from itjax.synth.inputs import SEED_TASKS, SeedTask, load_seed_tasks
from itjax.synth.progress import Journal, run_pending
from itjax.synth.teacher import Teacher


@dataclasses.dataclass(frozen=True)
class SelfInstructConfig:
  """Self-Instruct's own settings (Wang et al.'s values where they apply)."""

  seed_tasks: str = SEED_TASKS
  num_instructions: int = 100
  max_requests: int | None = None  # default: 2 * num_instructions + 10
  prompt_seed_tasks: int = 6  # demonstrations per request: human-written ...
  prompt_generated_tasks: int = 2  # ... and generated
  rouge_threshold: float = 0.7
  min_words: int = 3
  max_words: int = 150
  classify_demos: int = 10
  instance_demos: int = 3
  max_instances: int = 5
  drop_truncated: bool = True  # drop the last item of an answer cut at max_tokens (instruction or instance)

  def __post_init__(self):
    if self.num_instructions < 1 or self.max_instances < 1:
      raise UserError("--num_instructions and --max_instances must be >= 1")


class SelfInstruct:
  """One Self-Instruct run in an output directory (resumes what is there)."""

  def __init__(self, teacher: Teacher, run: RunConfig, cfg: SelfInstructConfig = SelfInstructConfig()):
    self.cfg, self.teacher = cfg, teacher
    self.seeds: list[SeedTask] = load_seed_tasks(cfg.seed_tasks)
    settings = {**dataclasses.asdict(cfg), **dataclasses.asdict(run)}
    settings.pop("mixins")
    self.run = Run("self_instruct", run, teacher, settings)
    self.rng_seed = run.seed

  # --- 1. instructions ------------------------------------------------------------------------------------------------
  def _kept(self, journal: Journal) -> list[dict]:
    return [c for r in journal.records for c in r["candidates"] if c["kept"]]

  def generate_instructions(self) -> list[dict]:
    """Kept instructions ({"id", "instruction"}), generating more until num_instructions."""
    cfg = self.cfg
    journal = self.instructions_journal = self.run.journal("instructions.jsonl")
    pool = filters.RougePool([s.instruction for s in self.seeds])
    kept = self._kept(journal)
    for c in kept:
      pool.add(c["instruction"])
    max_requests = cfg.max_requests if cfg.max_requests is not None else 2 * cfg.num_instructions + 10
    next_k = max((r["request"] for r in journal.records), default=-1) + 1
    leading = self.teacher.cfg.endpoint == "completions"

    def requests():
      k = next_k
      while len(kept) < cfg.num_instructions and k < max_requests:
        rng = random.Random(f"{self.rng_seed}-instructions-{k}")
        demos = rng.sample(self.seeds, min(cfg.prompt_seed_tasks, len(self.seeds)))
        generated = rng.sample(kept, min(cfg.prompt_generated_tasks, len(kept)))
        texts = [(s.id, s.instruction) for s in demos] + [(g["id"], g["instruction"]) for g in generated]
        rng.shuffle(texts)
        yield f"req-{k:06d}", (k, texts)
        k += 1

    def work(key: str, payload: Any):
      k, texts = payload
      parsed = self.teacher.generate(prompts.instructions_prompt([t for _, t in texts]), **self.run.sampling(),
                                     seed=self.rng_seed + k,
                                     parse=lambda cs: prompts.parse_instructions(cs[0], leading_is_item=leading))
      return k, [i for i, _ in texts], parsed

    def commit(key: str, result) -> tuple[list[dict], int]:
      k, demo_ids, parsed = result
      candidates = []
      for j, (text, cut) in enumerate(parsed):
        reason = (cut if cfg.drop_truncated else None) or filters.instruction_reason(
            text, min_words=cfg.min_words, max_words=cfg.max_words)
        if reason is None:
          score, _ = pool.most_similar(text)
          reason = "similar" if score > cfg.rouge_threshold else None
        if reason is None and len(kept) >= cfg.num_instructions:
          reason = "over_target"
        cand = {"id": f"si-{k:06d}-{j}", "instruction": text, "kept": reason is None, "reason": reason}
        candidates.append(cand)
        if reason is None:
          pool.add(text)
          kept.append(cand)
      return [{"key": key, "request": k, "demos": demo_ids, "candidates": candidates}], sum(c["kept"] for c in
                                                                                             candidates)

    run_pending(requests(), work, journal, self.run.progress, "instructions", workers=self.teacher.cfg.concurrency,
                total=cfg.num_instructions, initial=min(len(kept), cfg.num_instructions), commit=commit,
                max_consecutive_failures=self.run.cfg.max_consecutive_failures)
    return kept

  # --- 2. classification ----------------------------------------------------------------------------------------------
  def classify(self, kept: list[dict]) -> dict[str, bool]:
    """instruction id -> is a classification task."""
    journal = self.classify_journal = self.run.journal("classify.jsonl")
    clf = [s for s in self.seeds if s.is_classification]
    gen = [s for s in self.seeds if not s.is_classification]

    def work(key: str, instruction: str) -> list[dict]:
      rng = random.Random(f"{self.rng_seed}-classify-{key}")
      half = self.cfg.classify_demos // 2
      demos = [(s.instruction, True) for s in rng.sample(clf, min(half, len(clf)))]
      demos += [(s.instruction, False) for s in rng.sample(gen, min(self.cfg.classify_demos - len(demos), len(gen)))]
      rng.shuffle(demos)
      answer = self.teacher.generate(prompts.classify_prompt(demos, instruction), max_tokens=8, temperature=0.0,
                                     parse=lambda cs: prompts.parse_yes_no(cs[0]))
      return [{"key": key, "is_classification": bool(answer), "unclear": answer is None}]

    items = [(c["id"], c["instruction"]) for c in kept]
    run_pending(items, work, journal, self.run.progress, "classify", workers=self.teacher.cfg.concurrency,
                total=len(items), initial=sum(i in journal.keys for i, _ in items),
                max_consecutive_failures=self.run.cfg.max_consecutive_failures)
    return {r["key"]: r["is_classification"] for r in journal.records}

  # --- 3. instances ---------------------------------------------------------------------------------------------------
  def instances(self, kept: list[dict], is_clf: dict[str, bool]) -> Journal:
    journal = self.run.journal("instances.jsonl")
    cfg = self.cfg

    def work(key: str, payload: tuple[str, bool]):
      instruction, clf = payload
      rng = random.Random(f"{self.rng_seed}-instances-{key}")
      same = [s for s in self.seeds if s.is_classification == clf] or self.seeds
      demos = [(s.instruction, s.instances) for s in rng.sample(same, min(cfg.instance_demos, len(same)))]
      make = prompts.class_instances_prompt if clf else prompts.instances_prompt
      return self.teacher.generate(make(demos, instruction), **self.run.sampling(), stop=prompts.STOP_AT_NEXT_TASK,
                                   parse=lambda cs: prompts.parse_instances(cs[0], output_first=clf))

    def commit(key: str, parsed) -> tuple[list[dict], int]:
      instruction, clf = payloads[key]
      reasons = filters.instance_reasons([(i, o) for i, o, _ in parsed], instruction=instruction, labels=clf)
      out, n_kept = [], 0
      for (inp, output, cut), reason in zip(parsed, reasons, strict=True):
        reason = (cut if cfg.drop_truncated else None) or reason
        if reason is None and n_kept >= cfg.max_instances:
          reason = "over_limit"
        n_kept += reason is None
        out.append({"input": inp, "output": output, "kept": reason is None, "reason": reason})
      return [{"key": key, "instances": out}], 1

    items = [(c["id"], (c["instruction"], is_clf[c["id"]])) for c in kept if c["id"] in is_clf]
    payloads = dict(items)
    run_pending(items, work, journal, self.run.progress, "instances", workers=self.teacher.cfg.concurrency,
                total=len(items), initial=sum(i in journal.keys for i, _ in items), commit=commit,
                max_consecutive_failures=self.run.cfg.max_consecutive_failures)
    return journal

  # --- all ------------------------------------------------------------------------------------------------------------
  def __call__(self) -> dict[str, Any]:
    """Runs (or resumes) every stage, then writes data.jsonl and report.json; returns the report."""
    kept = self.generate_instructions()
    is_clf = self.classify(kept)
    inst = self.instances(kept, is_clf)
    by_id = {c["id"]: c for c in kept}
    rows = []
    for rec in inst.records:
      c = by_id.get(rec["key"])
      if c is None:
        continue
      for k, x in enumerate(rec["instances"]):
        if x["kept"]:
          rows.append({"instruction": c["instruction"], "input": x["input"], "output": x["output"],
                       "provenance": self.run.provenance(id=f"{c['id']}/{k}", is_classification=is_clf[c["id"]])})
    return self.run.finish(rows, self.stage_counts(kept, is_clf, inst))

  def stage_counts(self, kept: list[dict], is_clf: dict[str, bool], inst: Journal) -> dict[str, Any]:
    """What each stage saw and what each filter removed (over every run in this output directory)."""
    progress = self.run.progress
    cands = [c for r in self.instructions_journal.records for c in r["candidates"]]
    instances = [x for r in inst.records for x in r["instances"]]
    unclear = sum(r.get("unclear", False) for r in self.classify_journal.records)
    return {
        "instructions": {"requests": len(self.instructions_journal.records),
                         "failed_requests": progress.counter("instructions").get("failed_requests", 0),
                         "candidates": len(cands), "kept": sum(c["kept"] for c in cands),
                         "removed": dict(Counter(c["reason"] for c in cands if not c["kept"]))},
        "classify": {"instructions": len(kept), "classification": sum(is_clf.values()),
                     "generation": len(is_clf) - sum(is_clf.values()), "unclear_answers": unclear,
                     "failed_requests": progress.counter("classify").get("failed_requests", 0)},
        "instances": {"instructions": len(inst.records),
                      "failed_requests": progress.counter("instances").get("failed_requests", 0),
                      "candidates": len(instances), "kept": sum(x["kept"] for x in instances),
                      "removed": dict(Counter(x["reason"] for x in instances if not x["kept"]))},
    }
