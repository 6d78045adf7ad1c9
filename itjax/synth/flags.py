"""`itjax data`'s command-line flags (kept apart from the pipelines, so `itjax --help` loads none of them)."""

from __future__ import annotations

import argparse
from typing import Any

from itjax.synth import prompts
from itjax.synth.inputs import SEED_TASKS

COMMANDS = ("self_instruct", "evol_instruct", "distill")


def _common(p: argparse.ArgumentParser) -> None:
  t = p.add_argument_group("teacher (any OpenAI-compatible server, e.g. `itjax serve`)")
  t.add_argument("--teacher_url", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
  t.add_argument("--teacher_model", required=True, help="the model name the server expects")
  t.add_argument("--endpoint", default="chat", choices=("chat", "completions"),
                 help="/chat/completions (default) or /completions")
  t.add_argument("--api_key_env", default="OPENAI_API_KEY",
                 help="environment variable holding the API key (never logged); unset or empty: no key")
  t.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
  t.add_argument("--max_retries", type=int, default=4, help="retries per request (exponential backoff)")
  t.add_argument("--retry_backoff", type=float, default=1.0, help="seconds before the first retry; doubles")
  t.add_argument("--request_timeout", type=float, default=120.0, help="seconds per request")
  t.add_argument("--max_consecutive_failures", type=int, default=10,
                 help="stop (resumably) after this many failed requests in a row")
  g = p.add_argument_group("generation and output")
  g.add_argument("--output_dir", required=True, help="journals, progress.json, data.jsonl, report.json")
  g.add_argument("--max_tokens", type=int, default=512)
  g.add_argument("--temperature", type=float, default=0.7)
  g.add_argument("--top_p", type=float, default=1.0)
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--decontaminate", nargs="+", default=[], metavar="TASK",
                 help="eval tasks/mixtures: drop examples sharing a 13-gram with their test and validation examples")
  g.add_argument("--mix", action="append", default=[], metavar="NAME=PATH[@N]",
                 help="mix in a JSONL file rendered by template NAME (safety, negative or --mix_templates)")
  g.add_argument("--mix_templates", default=None, help="JSON file of extra mix templates")
  g.add_argument("--tasks_module", action="append", default=[], metavar="MODULE",
                 help="a module that registers tasks (repeatable; before or after the subcommand): a module name "
                      "(installed, on PYTHONPATH or in the current directory), a .py file or a package directory")


def add_parser(sub: Any) -> argparse.ArgumentParser:
  """Adds `data` and its subcommands to the `itjax` subparsers."""
  d = sub.add_parser("data", help="generate instruction data with a teacher model (Self-Instruct, Evol-Instruct, "
                                  "distillation)")
  dsub = d.add_subparsers(dest="data_command", required=True)
  si = dsub.add_parser("self_instruct", help="bootstrap instructions and instances from seed tasks")
  _common(si)
  si.add_argument("--seed_tasks", default=SEED_TASKS, help="seed-task JSONL (default: the shipped set)")
  si.add_argument("--num_instructions", type=int, default=100, help="instructions to keep")
  si.add_argument("--max_requests", type=int, default=None, help="instruction requests at most (default 2N+10)")
  si.add_argument("--rouge_threshold", type=float, default=0.7)
  si.add_argument("--max_instances", type=int, default=5, help="kept instances per instruction at most")
  si.add_argument("--keep_truncated", action="store_true", help="keep the last item of answers cut at --max_tokens")
  ev = dsub.add_parser("evol_instruct", help="evolve instructions in depth and breadth, then answer them")
  _common(ev)
  ev.add_argument("--input", required=True, help="instructions: JSONL (instruction[/input] or prompt) or .txt")
  ev.add_argument("--rounds", type=int, default=4)
  ev.add_argument("--ops", nargs="+", default=list(prompts.EVOL_OPS), choices=prompts.EVOL_OPS)
  ev.add_argument("--judge_equal", action="store_true", help="also ask the teacher if an evolution changed anything")
  ev.add_argument("--max_items", type=int, default=None)
  ev.add_argument("--keep_truncated", action="store_true", help="keep rewrites and answers cut at --max_tokens")
  ds = dsub.add_parser("distill", help="answer an instruction set with the teacher")
  _common(ds)
  ds.add_argument("--input", required=True, help="instructions: JSONL (instruction[/input] or prompt) or .txt")
  ds.add_argument("--cot", action="store_true", help="ask for step-by-step reasoning ending 'So the answer is'")
  ds.add_argument("--system_prompt", default=None)
  ds.add_argument("--max_items", type=int, default=None)
  ds.add_argument("--keep_truncated", action="store_true", help="keep answers cut at --max_tokens")
  ds.add_argument("--turns", type=int, default=1,
                  help="assistant turns per example; > 1: the teacher writes follow-ups too (chat JSONL output)")
  return d
