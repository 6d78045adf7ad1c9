"""Gin configuration with T5X conventions, and one-line errors for gin mistakes.

Flags: `--gin_file` (repeatable), `--gin.NAME=VALUE`, `--gin_search_paths`.
An unknown configurable, parameter or macro, a `%gin.REQUIRED` left unset or a
missing file becomes an `itjax.errors.UserError` naming it and the nearest
valid names.
"""

from __future__ import annotations

import difflib
import importlib.resources
import inspect
import io
import os
import re
import tokenize
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gin
from gin import config_parser

# Modules imported for the gin configurables they define (none of them imports TensorFlow or seqio).
from itjax import peft  # noqa: F401  (lora, prefix_tuning, adapters)
from itjax.core import distributed, mesh, vocabulary  # noqa: F401
from itjax.core.model_dir import find_model_dir
from itjax.errors import UserError
from itjax.eval import infer, settings  # noqa: F401
from itjax.models.families import families
from itjax.train import optim  # noqa: F401
from itjax.train import settings as train_settings  # noqa: F401
from itjax.train.objectives import cross_entropy, grpo, ppo, preference, reward  # noqa: F401

CONFIG_GIN = "config.gin"  # a run's operative config, in its MODEL_DIR
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gin_configs_dir() -> str:
  """The folder of the shipped gin files: package `itjax.gin_configs` (a wheel, or `pip install -e`
  mapping it onto <repo>/gin_configs), else <repo>/gin_configs of a source tree on sys.path."""
  try:
    path = importlib.resources.files("itjax.gin_configs")
  except ModuleNotFoundError:
    return os.path.join(REPO_ROOT, "gin_configs")
  return os.fspath(path)


GIN_CONFIGS_DIR = _gin_configs_dir()
# `examples/x.gin` (and the `include 'models/...'` lines) resolve in GIN_CONFIGS_DIR, and `gin_configs/examples/x.gin`
# in its parent, from any working directory and with the package installed or not.
DEFAULT_SEARCH_PATHS = (".", GIN_CONFIGS_DIR, os.path.dirname(GIN_CONFIGS_DIR))


def register_configurables() -> None:
  """Registers the model configs of every family (DecoderConfig, T5Config, ...) as gin configurables.

  The other configurables gin files name (train, stream_settings, checkpoint_settings, sft, eval_settings,
  infer, create_mesh, make_optimizer, lora, vocabulary, ...) register when this module imports theirs; a
  command's own entry point (`evaluate`) registers when the CLI imports it, before parsing.
  """
  for family in families().values():
    if not gin.config._REGISTRY.get_all_matches(family.config_cls.__name__):
      gin.external_configurable(family.config_cls, module="itjax")


def _configurable_names() -> list[str]:
  names = set()
  for selector in gin.config._REGISTRY._selector_map:
    if not selector.startswith("gin."):
      names.add(selector.rsplit(".", 1)[-1])
  return sorted(names)


def _macro_names() -> list[str]:
  return sorted({scope_sel[1].split("/")[0] for scope_sel in gin.config._CONFIG
                 if scope_sel[1].endswith("gin.macro") or scope_sel[1].endswith("/macro")})


def _close(name: str, candidates: Sequence[str]) -> str:
  m = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
  return f"; did you mean {', '.join(m)}?" if m else ""


def _parameters_of(configurable: str) -> list[str]:
  matches = gin.config._REGISTRY.get_all_matches(configurable)
  if not matches:
    return []
  fn = matches[0].wrapped
  try:
    return list(inspect.signature(fn).parameters)
  except (TypeError, ValueError):
    return []


def explain(e: BaseException, bindings: Sequence[str] = ()) -> str:
  """A one-line message for a gin error, naming the value, where it was set and nearest valid names."""
  msg = str(e)
  first = msg.split("\n")[0]
  where = ""
  if loc := re.search(r"In file \"([^\"]+)\", line (\d+)", msg):
    where = f" ({loc.group(1)}, line {loc.group(2)})"
  elif (loc := re.search(r"In bindings string line (\d+)", msg)) and int(loc.group(1)) <= len(bindings):
    where = f" (flag --gin.{bindings[int(loc.group(1)) - 1]})"
  elif (isinstance(e, SyntaxError) and not getattr(e, "filename", None) and (loc := re.search(r"\(line (\d+)\)", msg))
        and int(loc.group(1)) <= len(bindings)):  # a parse error in the flags: gin counts them as lines
    first = first.replace(loc.group(0), "").strip()
    where = f" (flag --gin.{bindings[int(loc.group(1)) - 1]})"
  if m := re.search(r"No configurable matching '([^']+)'", msg):
    return f"unknown gin configurable {m.group(1)!r}{where}{_close(m.group(1), _configurable_names())}"
  if m := re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", msg):
    params = _parameters_of(m.group(1))
    return f"gin configurable {m.group(1)!r} has no parameter {m.group(2)!r}{where}{_close(m.group(2), params)}"
  if m := re.search(r"(\S+)/macro\.value set to `%gin\.REQUIRED` but not subsequently overridden", msg):
    return f"missing required gin value {m.group(1)}: set it with --gin.{m.group(1)}=..."
  if m := re.search(r"(\S+) set to `%gin\.REQUIRED` but not subsequently overridden", msg):
    name = m.group(1).replace("/", ".")
    return f"missing required gin value {name}: set it with --gin.{name}=..."
  if m := re.search(r"Required bindings for `([^`]+)` not provided in config: \[([^\]]*)\]", msg):
    params = [p.strip(" '\"") for p in m.group(2).split(",")]
    return f"missing required gin value(s) {', '.join(f'{m.group(1)}.{p}' for p in params)}"
  if m := re.search(r"No bindings specified for '([^/']+)/gin\.macro'", msg):
    return f"gin macro %{m.group(1)} is used but never set{_close(m.group(1), _macro_names())}"
  if m := re.search(r"Unable to open file: ([^.]+\.gin)\. Searched config paths: (.*)\.", msg):
    return f"gin file {m.group(1)} not found (searched {m.group(2)}); add its folder with --gin_search_paths"
  return f"gin: {first}{where}"


def _quote_bare(binding: str) -> str:
  """`NAME=word` -> `NAME='word'`: bare words are strings on the command line, as users expect."""
  name, sep, value = binding.partition("=")
  v = value.strip()
  if sep and re.fullmatch(r"[A-Za-z_][\w./:-]*", v) and v not in ("True", "False", "None") and not v.startswith("@"):
    return f"{name}={v!r}"
  if sep and re.fullmatch(r"[\w./:-]*/[\w./:-]*", v):  # a path
    return f"{name}={v!r}"
  return binding


def _plain_file_readers() -> None:
  """Drops gin's "python package path" reader: it mistakes `models/x.gin` for a package
  `models` whenever one is importable (and crashes on namespace packages)."""
  gin.config._FILE_READERS[:] = [r for r in gin.config._FILE_READERS
                                 if getattr(r[0], "__name__", "") != "system_path_reader"]


def parse(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
  """Registers itjax's configurables and parses files and bindings (T5X order: files, then bindings)."""
  register_configurables()
  _plain_file_readers()
  gin.clear_config()
  for p in list(search_paths) + list(DEFAULT_SEARCH_PATHS):
    gin.add_config_file_search_path(os.path.abspath(p))
  bindings = [_quote_bare(b) for b in bindings]
  try:
    gin.parse_config_files_and_bindings(list(gin_files), bindings, finalize_config=True)
  except (ValueError, SyntaxError, OSError, KeyError, TypeError) as e:
    raise UserError(explain(e, bindings)) from None
  except tokenize.TokenError:  # gin's lexer reached the end of a file inside a bracket or string
    raise UserError(_unterminated(gin_files, bindings)) from None
  _check_flag_macros(bindings)


def _unterminated(gin_files: Sequence[str], bindings: Sequence[str]) -> str:
  """Names the gin file (or flag) with an unbalanced bracket or unterminated string, and its line."""
  texts = [(f"--gin.{b}", b) for b in bindings]
  for f in gin_files:
    try:
      with open(f) as fh:
        texts.append((f, fh.read()))
    except OSError:
      continue
  for where, text in texts:
    opened: list[tuple[str, int]] = []  # unclosed brackets: (bracket, line)
    try:
      for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
          opened.append((tok.string, tok.start[0]))
        elif tok.type == tokenize.OP and tok.string in ")]}" and opened:
          opened.pop()
    except tokenize.TokenError as e:
      if opened:
        bracket, line = opened[-1]
        return f"gin: {where}, line {line}: this {bracket!r} is never closed"
      line = e.args[1][0] if len(e.args) > 1 else "?"
      return f"gin: {where}, line {line}: unterminated string (the end of the text was reached inside it)"
  return f"gin: an unbalanced bracket or unterminated string in an included file of {', '.join(gin_files)}"


def _macro_references(value: Any) -> Iterator[str]:
  """The macros a bound value refers to (`%NAME`), at any depth of containers."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.name.endswith("macro"):
      yield value.scoped_selector.split("/")[0]
  elif isinstance(value, Mapping):
    for k, v in value.items():
      yield from _macro_references(k)
      yield from _macro_references(v)
  elif isinstance(value, list | tuple | set):
    for v in value:
      yield from _macro_references(v)


def _check_flag_macros(bindings: Sequence[str]) -> None:
  """A macro set by a flag (`--gin.NAME=...`) that nothing uses is a misspelling: the run would silently train
  with the default. gin files may define macros they do not use; flags name what the user meant to change."""
  used = {name for params in gin.config._CONFIG.values() for v in params.values() for name in _macro_references(v)}
  for b in bindings:
    name = b.partition("=")[0].strip()
    if name and "." not in name and "/" not in name and name not in used:
      flag = "--model_dir" if name == "MODEL_DIR" else f"--gin.{b}"
      raise UserError(f"{flag}: no gin file or binding uses %{name}, so it would change nothing"
                      f"{_close(name, sorted(used))}")


@gin.configurable("task_modules")
def task_modules(modules: Sequence[str] = (), from_command_line: Sequence[str] = ()) -> tuple[str, ...]:
  """The modules that register a run's tasks: `modules` as a gin file sets them, and `from_command_line` as
  `--tasks_module` gave them (resolved: files as absolute paths). The CLI calls this after parsing, so both land
  in the run's operative config.gin, from which `itjax eval` imports them again."""
  return tuple(dict.fromkeys([*from_command_line, *modules]))


def task_modules_binding(resolved: Sequence[str]) -> str:
  """The gin binding that records `--tasks_module`'s resolved modules."""
  return f"task_modules.from_command_line = {list(resolved)!r}"


def query(selector: str) -> Any:
  """A parsed gin value with macros resolved (e.g. `evaluate.checkpoint_path`), or None when it is not bound."""
  try:
    value = gin.query_parameter(selector)
  except ValueError:
    return None
  while isinstance(value, gin.config.ConfigurableReference) and value.configurable.name.endswith("macro"):
    value = value.scoped_configurable_fn()
  return value


def recorded_task_modules(path: str) -> tuple[str, tuple[str, ...]]:
  """(config.gin, the task modules it records) of the run at or above checkpoint `path`; ("", ()) without one."""
  try:
    file = os.path.join(find_model_dir(path), CONFIG_GIN)
  except UserError:
    return "", ()
  if not os.path.exists(file):
    return "", ()
  with open(file, encoding="utf-8") as f:
    text = f.read()
  found: list[str] = []
  try:
    for st in config_parser.ConfigParser(text, gin.config.ParserDelegate(skip_unknown=True)):
      if (isinstance(st, config_parser.BindingStatement) and st.selector == "task_modules"
          and st.arg_name in ("from_command_line", "modules") and isinstance(st.value, (list, tuple))):
        found += [str(m) for m in st.value]
  except (SyntaxError, ValueError) as e:
    raise UserError(f"{file}: unreadable gin ({str(e).splitlines()[0]})") from None
  return file, tuple(dict.fromkeys(found))
