"""Looking up tasks and mixtures by name, with errors that suggest the nearest; importing the modules that
register them (`--tasks_module`: a module name, a .py file or a package directory)."""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from collections.abc import Sequence

import seqio

from itjax.errors import UserError

# Modules whose import registers the project's tasks and mixtures.
DEFAULT_TASK_MODULES = ("itjax_tasks",)
# The splits an evaluation reports under FLAN's protocol (eval_settings.split="test", selection_split="validation",
# as the examples run): what contamination checks read by default. A task without one contributes the others.
EVAL_SPLITS = ("test", "validation")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _is_path(spec: str) -> bool:
  return spec.endswith(".py") or "/" in spec or os.sep in spec or spec.startswith("~") or not _DOTTED.fullmatch(spec)


class _NotFound(Exception):
  """The module itself (not something it imports) is not on sys.path."""


def _import(name: str, spec: str):
  """importlib.import_module, with the user module's own import and syntax errors as one-line UserErrors."""
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name and (name == e.name or name.startswith(e.name + ".")):
      raise _NotFound from None
    raise UserError(f"task module {spec!r} could not be imported: {e}") from None
  except ImportError as e:
    raise UserError(f"task module {spec!r} could not be imported: {e}") from None
  except SyntaxError as e:
    raise UserError(f"task module {spec!r}: {e.filename}:{e.lineno}: {e.msg}") from None


def _import_file(spec: str) -> str:
  """Imports a .py file or package directory as a top-level module (its folder joins sys.path, so it may import
  its siblings); returns its absolute path."""
  path = os.path.abspath(os.path.expanduser(spec.rstrip("/" + os.sep) or spec))
  if not os.path.exists(path):
    raise UserError(f"task module {spec!r}: no such file or directory")
  if os.path.isdir(path):
    init = os.path.join(path, "__init__.py")
    if not os.path.exists(init):
      raise UserError(f"task module {spec!r}: a directory must be a Python package (holding __init__.py)")
    name, expected = os.path.basename(path), init
  elif path.endswith(".py"):
    name, expected = os.path.basename(path)[:-3], path
  else:
    raise UserError(f"task module {spec!r}: expected a module name, a .py file or a package directory")
  if not name.isidentifier():
    raise UserError(f"task module {spec!r}: {name!r} is not a Python module name; rename it (letters, digits, _)")
  folder = os.path.dirname(path)
  if folder not in sys.path:
    sys.path.append(folder)
  importlib.invalidate_caches()
  try:
    module = sys.modules.get(name) or _import(name, spec)
  except _NotFound:  # a stale finder cache, or the folder is unreadable
    raise UserError(f"task module {spec!r}: cannot import {name!r} from {folder}") from None
  got = getattr(module, "__file__", None)
  if not got or os.path.realpath(got) != os.path.realpath(expected):
    raise UserError(f"task module {spec!r}: the module name {name!r} is already taken by {got or 'a builtin'}; "
                    "rename the file")
  return path


def _import_name(name: str) -> str:
  """Imports a dotted module name from sys.path, else from the current directory; returns how to import it again
  from anywhere (a top-level module found in the current directory: its absolute path)."""
  try:
    return _portable(name, _import(name, name))
  except _NotFound:
    pass
  cwd = os.getcwd()
  if cwd in sys.path or "" in sys.path:
    raise UserError(f"task module {name!r} not found (searched sys.path and the current directory {cwd}); give "
                    "an installed module or a path to a .py file or package directory")
  sys.path.append(cwd)
  importlib.invalidate_caches()
  try:
    module = _import(name, name)
  except _NotFound:
    raise UserError(f"task module {name!r} not found (searched the installed packages, PYTHONPATH and the current "
                    f"directory {cwd}); give a path to a .py file or package directory instead") from None
  return _portable(name, module)


def _portable(name: str, module) -> str:
  """A top-level module that sits in the current directory as its absolute path (so that a run recorded with it
  imports it from anywhere); any other module as its name."""
  file = getattr(module, "__file__", None)
  if "." in name or not file:
    return name
  path = os.path.dirname(file) if os.path.basename(file) == "__init__.py" else file
  stem = os.path.basename(path)[:-3] if path.endswith(".py") else os.path.basename(path)
  if stem == name and os.path.dirname(os.path.realpath(path)) == os.path.realpath(os.getcwd()):
    return os.path.abspath(path)
  return name


def import_task_modules(modules: Sequence[str] = DEFAULT_TASK_MODULES) -> list[str]:
  """Imports each module that registers tasks: a dotted name (installed, on PYTHONPATH or in the current directory),
  a path to a .py file or a package directory. Returns each one as it can be imported again from any directory
  (what a run records); a missing one is a UserError naming it."""
  out = []
  for spec in modules:
    spec = str(spec).strip()
    if not spec:
      raise UserError("--tasks_module: empty module name")
    resolved = _import_file(spec) if _is_path(spec) else _import_name(spec)
    if resolved not in out:
      out.append(resolved)
  return out


def all_names() -> list[str]:
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def nearest(name: str, candidates: list[str], n: int = 3) -> str:
  close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
  return f"; did you mean {', '.join(close)}?" if close else ""


def require_task(name: str) -> seqio.Task | seqio.Mixture:
  """The task or mixture called `name`, or a UserError naming the nearest ones."""
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  raise UserError(f"unknown task or mixture {name!r}{nearest(name, all_names())} (see `itjax tasks list`)")


def leaf_tasks(name: str) -> list[seqio.Task]:
  """The tasks under a task or mixture name (recursively)."""
  obj = require_task(name)
  return [obj] if isinstance(obj, seqio.Task) else list(obj.tasks)
