"""Type and range checks of a model config's fields, where gin (or an HF config.json) builds it.

A value of the wrong type would otherwise surface deep inside Flax or XLA ("'str' object cannot be
interpreted as an integer"); here it is a one-line UserError naming the gin parameter. Integer fields
are sizes and counts (at least 1), floats finite numbers, bools and strings what they say.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from itjax.errors import UserError, check_int


def check_fields(cfg: Any, minimum: dict[str, int] | None = None) -> None:
  """Checks each int / float / bool / str field of dataclass `cfg` (annotations as written); `minimum` overrides
  the least value of named int fields (default 1)."""
  name = type(cfg).__name__
  for f in dataclasses.fields(cfg):
    value, kind = getattr(cfg, f.name), str(f.type)
    where = f"{name}.{f.name}={value!r}"
    if kind == "int":
      check_int(f"{name}.{f.name}", value, (minimum or {}).get(f.name, 1))
    elif kind == "float":
      if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{where} must be a number")
    elif kind == "bool" and not isinstance(value, bool):
      raise UserError(f"{where} must be True or False")
    elif kind == "str" and not isinstance(value, str):
      raise UserError(f"{where} must be a string")
