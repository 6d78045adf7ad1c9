"""The one error type for user mistakes (the CLI prints it as one line), and the OS errors on user paths it wraps."""

from __future__ import annotations

import os


class UserError(Exception):
  """A user mistake (config, data, checkpoint, task name); the CLI prints it as one line."""


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
  """`value` if it is an integer in [minimum, maximum], else a UserError naming the gin parameter `name`."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise UserError(f"{name}={value!r} must be an integer >= {minimum}")
  if maximum is not None and value > maximum:
    raise UserError(f"{name}={value!r} must be at most {maximum}")
  return value


def make_dirs(path: str, what: str) -> str:
  """Creates directory `path` (and its parents) if missing; a path that is a file, sits under a file, or cannot be
  written is a UserError naming `what` (e.g. "MODEL_DIR") and the path. Returns `path`."""
  try:
    os.makedirs(path, exist_ok=True)
  except FileExistsError:
    raise UserError(f"{what}={path}: is a file, not a directory") from None
  except NotADirectoryError:
    raise UserError(f"{what}={path}: a part of the path is a file, not a directory") from None
  except PermissionError:
    raise UserError(f"{what}={path}: permission denied (choose a directory you can write)") from None
  except OSError as e:
    raise UserError(f"{what}={path}: cannot create it ({e.strerror or e})") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise UserError(f"{what}={path}: not writable (choose a directory you can write)")
  return path
