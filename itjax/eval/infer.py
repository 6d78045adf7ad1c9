"""`itjax infer`: greedy generations from a checkpoint for raw input texts."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import gin
import jax

from itjax.data.vocab import default_vocabulary, use_model_dir_vocabulary
from itjax.eval.generate import predict
from itjax.models.config_io import find_model_dir
from itjax.train import partitioning
from itjax.train.checkpoints import load_model


@gin.configurable
def infer(*, inputs: Sequence[str], checkpoint_path: str = gin.REQUIRED, max_new_tokens: int = 64,
          batch_size: int = 16) -> list[str]:
  """Generates a continuation for each input (rendered as-is, then a newline, as templates end)."""
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  model, params = load_model(checkpoint_path, mesh, rules)
  use_model_dir_vocabulary(find_model_dir(checkpoint_path))
  vocab = default_vocabulary()
  rows = [{"input_ids": list(vocab.encode(t.rstrip() + "\n"))} for t in inputs]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return predict(model, params, rows, vocab, batch_size=batch_size, max_new_tokens=max_new_tokens)
