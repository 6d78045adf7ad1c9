"""Looking up tasks and mixtures by name, with errors that suggest the nearest."""

from __future__ import annotations

import difflib
import importlib

import seqio

from itjax.errors import UserError

# Modules whose import registers the project's tasks and mixtures.
DEFAULT_TASK_MODULES = ("itjax_tasks",)


def import_task_modules(modules: tuple[str, ...] = DEFAULT_TASK_MODULES) -> None:
  for m in modules:
    try:
      importlib.import_module(m)
    except ModuleNotFoundError as e:
      if e.name != m:
        raise
      raise UserError(f"task module {m!r} not found (is it installed / on PYTHONPATH?)") from None


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
