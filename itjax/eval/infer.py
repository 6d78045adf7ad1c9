"""`itjax infer`: greedy generations from a checkpoint for raw input texts (reads no task data)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import gin
import jax

from itjax.core.mesh import create_mesh, logical_axis_rules
from itjax.core.model_dir import ModelDir
from itjax.errors import check_int
from itjax.eval.predict import predict


@gin.configurable
def infer(*, inputs: Sequence[str], checkpoint_path: str = gin.REQUIRED, max_new_tokens: int = 64,
          batch_size: int = 16) -> list[str]:
  """Generates a continuation for each input (rendered as-is, then a newline, as templates end)."""
  check_int("infer.max_new_tokens", max_new_tokens, 1)
  check_int("infer.batch_size", batch_size, 1)
  mesh, rules = create_mesh(), logical_axis_rules()
  loaded = ModelDir.open(checkpoint_path).load(mesh, rules)
  vocab = loaded.tokenizer
  rows = [{"input_ids": list(vocab.encode(t.rstrip() + "\n"))} for t in inputs]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return predict(loaded.interface, params=loaded.params, rows=rows, vocab=vocab, batch_size=batch_size,
                   max_new_tokens=max_new_tokens)
