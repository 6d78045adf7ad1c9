"""`itjax` command line: parses flags, loads gin, calls one function per subcommand.

    itjax train   --gin_file=F [--gin_file=G] [--gin.NAME=VALUE ...] [--model_dir=DIR]
    itjax eval    --gin_file=F ... [--model_dir=DIR]
    itjax infer   --gin_file=F ... --input TEXT [--input TEXT] [--input_file FILE]
    itjax tasks   list [PATTERN] | show NAME [-n N] [--split SPLIT] | quality NAME --against EVAL [--split S ...]
    itjax convert --from_hf HF_DIR --output DIR | --to_hf OUT_DIR --checkpoint DIR [--model_type llama]
                  | --to_peft OUT_DIR --checkpoint DIR [--base_model HF_DIR]        (LoRA / prefix adapter)
    itjax compile --gin_file=F ... [--topology v5p-128] [--per_device_hbm_gib G]   (train step, ahead of time)
    itjax serve   --checkpoint DIR [--port 8000] [--model_name NAME]              (OpenAI-compatible HTTP)
    itjax data    self_instruct | evol_instruct | distill --teacher_url URL --teacher_model NAME --output_dir DIR ...

`--tasks_module M` (repeatable; before or after the subcommand) imports a module that registers tasks: a module
name (installed, on PYTHONPATH or in the current directory), a .py file or a package directory. train records it
in MODEL_DIR/config.gin (`task_modules.from_command_line`), and eval of that run imports it again unless given its own.

A user mistake prints one line (`itjax: error: ...`) and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from itjax.errors import UserError  # noqa: E402
from itjax.serve import flags as serve_flags  # noqa: E402
from itjax.synth import flags as data_flags  # noqa: E402

# Each subcommand imports what it runs when it runs (below), so that `itjax --help` and the commands that read no
# task data (convert, compile, serve, infer) start without TensorFlow and seqio.


def _quiet_libraries() -> None:
  """TF, absl and seqio are chatty at INFO/WARNING; keep the console for itjax."""
  import absl.logging

  absl.logging.set_verbosity(absl.logging.ERROR)
  logging.getLogger("absl").setLevel(logging.ERROR)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  warnings.filterwarnings("ignore", category=FutureWarning)
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter("itjax: %(message)s"))
  # gin logs every search-path miss; the one that matters becomes a UserError.
  handler.addFilter(lambda r: "/gin/" not in r.pathname)
  logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
  logging.getLogger("itjax").setLevel(logging.INFO)


TASKS_MODULE_HELP = ("a module that registers tasks (repeatable; before or after the subcommand): a module name "
                     "(installed, on PYTHONPATH or in the current directory), a .py file or a package directory")
TASKS_MODULE_DESTS = ("tasks_module_top", "tasks_module_group", "tasks_module")  # merged into args.tasks_module


def _tasks_module_flag(p: argparse.ArgumentParser, dest: str = "tasks_module", help_: str = TASKS_MODULE_HELP) -> None:
  """--tasks_module at one level of the command; each level keeps its own dest (argparse would let a subcommand's
  default overwrite what was given before it) and `run` joins them."""
  p.add_argument("--tasks_module", dest=dest, action="append", default=[], metavar="MODULE", help=help_)


def _gin_parser(name: str, sub, help_: str, tasks_help: str = TASKS_MODULE_HELP) -> argparse.ArgumentParser:
  p = sub.add_parser(name, help=help_)
  p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable); searched in search paths")
  p.add_argument("--gin_search_paths", default="", help="comma-separated folders to search for gin files")
  p.add_argument("--model_dir", default=None, help="shorthand for --gin.MODEL_DIR=DIR")
  _tasks_module_flag(p, help_=tasks_help)
  return p


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="itjax", description="Instruction tuning in JAX.")
  _tasks_module_flag(parser, "tasks_module_top")
  sub = parser.add_subparsers(dest="command", required=True)
  _gin_parser("train", sub, "train a model (gin entry point: train)",
              TASKS_MODULE_HELP + "; recorded in MODEL_DIR/config.gin")
  _gin_parser("eval", sub, "evaluate a checkpoint (gin entry point: evaluate)",
              TASKS_MODULE_HELP + "; default: those recorded in the checkpoint's config.gin")
  ignored = "accepted for uniformity and ignored: this command reads no task data"
  p = _gin_parser("infer", sub, "generate from a checkpoint (gin entry point: infer)", ignored)
  p.add_argument("--input", action="append", default=[], help="an input text (repeatable)")
  p.add_argument("--input_file", default=None, help="a file with one input per line")
  k = _gin_parser("compile", sub, "compile the train step ahead of time and report per-device memory", ignored)
  k.add_argument("--topology", default=None, help="target TPU slice, e.g. v4-32, v5p-128, v5e-16 (needs libtpu: "
                 "pip install -e '.[tpu]'); default: the local devices")
  k.add_argument("--num_slices", type=int, default=1, help="multislice: this many slices of --topology")
  k.add_argument("--per_device_hbm_gib", type=float, default=None, help="device memory to check against "
                 "(default: the device's, or the known HBM of its TPU generation)")
  k.add_argument("--json", default=None, help="also write the memory report as JSON here")
  t = sub.add_parser("tasks", help="list tasks and mixtures; show formatted examples")
  _tasks_module_flag(t, "tasks_module_group")
  tsub = t.add_subparsers(dest="tasks_command", required=True)
  tl = tsub.add_parser("list", help="list registered tasks and mixtures")
  tl.add_argument("pattern", nargs="?", default="", help="substring filter")
  _tasks_module_flag(tl)
  ts = tsub.add_parser("show", help="show a task's metadata and formatted examples, or a mixture's rates")
  _tasks_module_flag(ts)
  ts.add_argument("name")
  ts.add_argument("-n", type=int, default=3, help="examples to show")
  ts.add_argument("--split", default="validation")
  tq = tsub.add_parser("quality", help="duplicates in a training mixture and its n-gram overlap with eval sets")
  tq.add_argument("name", help="training task or mixture")
  tq.add_argument("--against", nargs="+", required=True, help="eval tasks or mixtures")
  tq.add_argument("--split", nargs="+", default=None, metavar="SPLIT",
                  help="eval splits to read (default: test validation, the splits FLAN's protocol reports and "
                       "chooses templates on: eval_settings.split and selection_split; a task lacking one "
                       "contributes the others)")
  tq.add_argument("--max_examples", type=int, default=None, help="training examples scanned per task")
  tq.add_argument("--output", default=None, help="also write the report as JSON here")
  tq.add_argument("--inputs_length", type=int, default=None, help="with --targets_length: count truncated examples")
  tq.add_argument("--targets_length", type=int, default=None)
  _tasks_module_flag(tq)
  c = sub.add_parser("convert", help="import a Hugging Face model / export an itjax checkpoint")
  c.add_argument("--from_hf", help="a local HF model directory (config.json + *.safetensors)")
  c.add_argument("--output", help="itjax model directory to write (with --from_hf)")
  c.add_argument("--to_hf", help="HF directory to write from an itjax checkpoint")
  c.add_argument("--checkpoint", help="itjax MODEL_DIR or checkpoint (with --to_hf)")
  c.add_argument("--model_type", default=None,
                 help="HF model_type to export as (llama, mistral, qwen2; t5); default: by architecture")
  c.add_argument("--dtype", default="float32", help="dtype of exported tensors")
  c.add_argument("--to_peft", help="peft adapter directory (adapter_config.json + adapter_model.safetensors) to "
                 "write from the checkpoint of a LoRA / prefix-tuning run")
  c.add_argument("--base_model", default=None, help="with --to_peft: recorded as base_model_name_or_path (e.g. the "
                 "HF directory exported from the base)")
  r = sub.add_parser("rlhf-report", help="a tuned policy against its SFT start on held-out prompts: win rates by "
                     "exact match and a reward model, reward and KL over steps")
  r.add_argument("--sft", required=True, help="the SFT policy (MODEL_DIR or checkpoint)")
  r.add_argument("--policy", required=True, help="the tuned policy (MODEL_DIR or checkpoint; its metrics.jsonl)")
  r.add_argument("--task", required=True, help="task or mixture whose prompts and answers to use")
  r.add_argument("--reward_model", default=None, help="a reward model (MODEL_DIR or checkpoint) to score both")
  r.add_argument("--split", default="validation")
  r.add_argument("--inputs_length", type=int, required=True)
  r.add_argument("--targets_length", type=int, required=True)
  r.add_argument("--max_new_tokens", type=int, default=16)
  r.add_argument("--output", required=True, help="folder for rlhf_report.json and rl_curves.png")
  _tasks_module_flag(r)
  serve_flags.add_parser(sub)
  data_flags.add_parser(sub)
  return parser


def _load_tasks(extra: Sequence[str]) -> list[str]:
  """Imports itjax's tasks and the `extra` modules; returns the extras as a run records them (absolute paths)."""
  from itjax.data.registry import DEFAULT_TASK_MODULES, import_task_modules

  import_task_modules(DEFAULT_TASK_MODULES)
  return import_task_modules(extra)


def _load_gin_task_modules(command: str) -> None:
  """After gin parsed: imports the task modules gin files name (`task_modules.modules`); eval without any also
  those recorded in the evaluated run's config.gin. Calling `task_modules` puts them in the operative config."""
  from itjax import config

  modules = config.task_modules()
  if not modules and command == "eval" and isinstance(path := config.query("evaluate.checkpoint_path"), str):
    file, modules = config.recorded_task_modules(path)
    if modules:
      logging.getLogger("itjax").info("task modules recorded in %s: %s", file, ", ".join(modules))
      try:
        _load_tasks(modules)
      except UserError as e:
        raise UserError(f"{e} (recorded in {file}; give --tasks_module to import others)") from None
      return
  _load_tasks(modules)


def _setup_gin(args, bindings: list[str], task_modules: Sequence[str] | None = None) -> None:
  """Parses the gin files and bindings; `task_modules` (resolved --tasks_module) are recorded as a binding."""
  from itjax import config

  if task_modules is not None:
    bindings = [config.task_modules_binding(task_modules)] + bindings
  if args.model_dir:
    bindings = [f"MODEL_DIR={args.model_dir!r}"] + bindings
  paths = [p for p in args.gin_search_paths.split(",") if p]
  config.parse(args.gin_file, bindings, paths)


def _call_gin(fn, **kwargs):
  """Calls a gin entry point, turning gin's missing-REQUIRED errors into UserError."""
  from itjax import config

  try:
    return fn(**kwargs)
  except (RuntimeError, ValueError) as e:
    if "Required bindings" in str(e) or "%gin.REQUIRED" in str(e) or "gin.macro" in str(e):
      raise UserError(config.explain(e)) from None
    raise


def bindings_from_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `--gin.NAME=VALUE` flags (returned as `NAME=VALUE`) from the other arguments."""
  bindings, rest = [], []
  for a in argv:
    if a.startswith("--gin."):
      body = a[len("--gin."):]
      if "=" not in body:
        raise UserError(f"{a}: expected --gin.NAME=VALUE")
      bindings.append(body)
    else:
      rest.append(a)
  return bindings, rest


def run(argv: Sequence[str]) -> int:
  bindings, rest = bindings_from_argv(argv)
  args = build_parser().parse_args(rest)
  args.tasks_module = [m for dest in TASKS_MODULE_DESTS for m in getattr(args, dest, None) or []]
  if bindings and args.command in ("tasks", "convert", "serve", "data", "rlhf-report"):
    raise UserError(f"`itjax {args.command}` takes no --gin. flags")
  if args.tasks_module and args.command in ("convert", "serve"):
    raise UserError(f"`itjax {args.command}` reads no tasks: --tasks_module is for train, eval, tasks and data")
  _quiet_libraries()
  if args.command in ("train", "eval", "infer", "compile"):
    import gin

    gin.clear_config()  # unlocks what an earlier command in this process finalized: new configurables register
  if args.command in ("train", "eval", "infer"):
    # Each command imports its own modules (before gin parses: they register configurables); train and eval
    # read task data (TensorFlow, seqio), infer does not.
    if args.command == "train":
      from itjax.eval.training import TrainingEval
      from itjax.train.trainer import train
    elif args.command == "eval":
      from itjax.eval.evaluator import evaluate
    else:
      from itjax.eval.infer import infer
    if args.command != "infer":
      _setup_gin(args, bindings, _load_tasks(args.tasks_module))
      _load_gin_task_modules(args.command)
    else:
      _setup_gin(args, bindings)
    if args.command == "train":
      return _call_gin(train, evaluator=TrainingEval)["exit_status"]
    elif args.command == "eval":
      _call_gin(evaluate)
    else:
      texts = list(args.input)
      if args.input_file:
        try:
          with open(args.input_file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
          raise UserError(f"--input_file={args.input_file}: {getattr(e, 'strerror', None) or e}") from None
      if not texts:
        raise UserError("itjax infer: give --input TEXT or --input_file FILE")
      for text, out in zip(texts, _call_gin(infer, inputs=texts), strict=True):
        print(f">>> {text}\n{out}\n")
  elif args.command == "compile":
    from itjax.train.aot import compile_command

    if not args.model_dir and not any(b.startswith("MODEL_DIR=") for b in bindings):
      bindings = ["MODEL_DIR='(unused by itjax compile)'"] + bindings  # finetune.gin requires it; nothing is written
    _setup_gin(args, bindings)
    return _call_gin(compile_command, topology=args.topology, num_slices=args.num_slices,
                     per_device_hbm_gib=args.per_device_hbm_gib, json_path=args.json)
  elif args.command == "tasks":
    from itjax.data import inspect_tasks

    _load_tasks(args.tasks_module)
    if args.tasks_command == "list":
      print(inspect_tasks.list_text(args.pattern))
    elif args.tasks_command == "quality":
      lengths = ({"inputs": args.inputs_length, "targets": args.targets_length}
                 if args.inputs_length and args.targets_length else None)
      print(inspect_tasks.quality_text(args.name, args.against, args.max_examples, args.output, lengths,
                                       splits=args.split))
    else:
      print(inspect_tasks.show_text(args.name, args.n, args.split))
  elif args.command == "convert":
    from itjax.convert import hf, peft_adapter

    if args.from_hf and args.output:
      hf.import_hf(args.from_hf, args.output)
    elif args.to_hf and args.checkpoint:
      hf.export_hf(args.checkpoint, args.to_hf, model_type=args.model_type, dtype=args.dtype)
    elif args.to_peft and args.checkpoint:
      peft_adapter.export_peft(args.checkpoint, args.to_peft, base_model_name_or_path=args.base_model, dtype=args.dtype)
    else:
      raise UserError("itjax convert: give --from_hf DIR --output DIR, --to_hf DIR --checkpoint DIR, "
                      "or --to_peft DIR --checkpoint DIR")
  elif args.command == "rlhf-report":
    from itjax.eval import rlhf_report

    _load_tasks(args.tasks_module)
    report = rlhf_report.rlhf_report(sft=args.sft, policy=args.policy, task=args.task, reward_model=args.reward_model,
                                     split=args.split, max_new_tokens=args.max_new_tokens, output=args.output,
                                     lengths={"inputs": args.inputs_length, "targets": args.targets_length})
    print(rlhf_report.report_text(report))
  elif args.command == "serve":
    from itjax.serve import server as serve_cli

    return serve_cli.run(args)
  elif args.command == "data":
    from itjax.synth import commands as data_cli

    if args.decontaminate or args.tasks_module:
      _load_tasks(args.tasks_module)
    data_cli.run(args)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  try:
    return run(sys.argv[1:] if argv is None else argv)
  except UserError as e:
    print(f"itjax: error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2


def console_main() -> None:
  """The `itjax` command: `main`, then a failed run exits at once.

  A failed training stream may still have threads inside its numpy functions, waiting for the GIL; freeing its
  iterator (at interpreter exit at the latest) would wait for them while holding it, a deadlock inside
  TensorFlow. So a failure (a traceback: 1, a user error: 2) flushes what it printed and leaves with
  `os._exit`; the checkpoints it wrote are already complete (the trainer waits for them).
  """
  try:
    code = main()
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException:  # noqa: BLE001 -- print it as Python would, then exit without the interpreter's teardown
    traceback.print_exc()
    code = 1
  if code in (1, 2):
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  console_main()
