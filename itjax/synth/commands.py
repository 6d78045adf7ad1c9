"""`itjax data self_instruct | evol_instruct | distill`: flags -> configs -> a pipeline run.

    itjax data self_instruct --teacher_url URL --teacher_model NAME --output_dir DIR [--num_instructions N] ...
    itjax data evol_instruct --teacher_url URL --teacher_model NAME --output_dir DIR --input FILE [--rounds R] ...
    itjax data distill       --teacher_url URL --teacher_model NAME --output_dir DIR --input FILE [--cot] ...

Running the same command again resumes the run in --output_dir. The flags are `itjax.synth.flags`.
"""

from __future__ import annotations

import argparse
from typing import Any

from itjax.data.registry import require_task
from itjax.errors import UserError
from itjax.synth import finalize, mixins
from itjax.synth.common import RunConfig
from itjax.synth.distill import Distill, DistillConfig
from itjax.synth.evol_instruct import EvolConfig, EvolInstruct
from itjax.synth.self_instruct import SelfInstruct, SelfInstructConfig
from itjax.synth.teacher import Teacher, TeacherConfig


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Runs the pipeline that `args` name; prints its counts; returns its report."""
  teacher = Teacher(TeacherConfig(args.teacher_url, args.teacher_model, endpoint=args.endpoint,
                                  api_key_env=args.api_key_env or None, concurrency=args.concurrency,
                                  max_retries=args.max_retries, backoff=args.retry_backoff,
                                  timeout=args.request_timeout))
  if args.decontaminate:  # fail now, not after the generation
    for name in args.decontaminate:
      require_task(name)
  templates = mixins.load_templates(args.mix_templates) if args.mix_templates else {}
  mixed = tuple(mixins.parse_mix_flags(args.mix, templates))
  run_cfg = RunConfig(args.output_dir, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                      seed=args.seed, max_consecutive_failures=args.max_consecutive_failures,
                      decontaminate=tuple(args.decontaminate), mixins=mixed)
  if args.data_command == "self_instruct":
    pipeline = SelfInstruct(teacher, run_cfg, SelfInstructConfig(
        seed_tasks=args.seed_tasks, num_instructions=args.num_instructions, max_requests=args.max_requests,
        rouge_threshold=args.rouge_threshold, max_instances=args.max_instances,
        drop_truncated=not args.keep_truncated))
  elif args.data_command == "evol_instruct":
    pipeline = EvolInstruct(teacher, run_cfg, EvolConfig(args.input, rounds=args.rounds, ops=tuple(args.ops),
                                                         judge_equal=args.judge_equal, max_items=args.max_items,
                                                         drop_truncated=not args.keep_truncated))
  else:
    pipeline = Distill(teacher, run_cfg, DistillConfig(args.input, cot=args.cot, system_prompt=args.system_prompt,
                                                       max_items=args.max_items,
                                                       drop_truncated=not args.keep_truncated, turns=args.turns))
  try:
    report = pipeline()
  except KeyboardInterrupt:
    raise UserError(f"interrupted; finished work is saved in {args.output_dir}: run the same command to "
                    "resume") from None
  print(finalize.format_report(report))
  return report
