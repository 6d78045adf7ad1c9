"""Held-out metrics of the training objective: one pass over a split of the training tasks (T5X's train_eval).

On the tasks' `validation_split`, at the start, every `eval_period` steps and at the end, logged as
`eval/validation/METRIC`: the validation loss of SFT, the held-out preference accuracy, margin and rewards of
DPO (against its frozen reference) and of a reward model, the mean reward of an RL objective's rollouts on the
held-out prompts (sampled with one fixed key, so the same policy scores the same). Every process reads the
whole split (held-out sets are small) and feeds its rows of each global batch, so all processes run the same
number of batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from itjax.data.pipeline import validation_rows
from itjax.data.preference import preference_dataset
from itjax.models.features import PREFERENCE_IDS


def global_batch(local: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each host's piece (its rows of the batch axis)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def validation_batches(name: str, lengths: Mapping[str, int], batch_size: int, split: str, layout: Any,
                       vocabulary: seqio.Vocabulary, objective: Any) -> list[dict[str, np.ndarray]]:
  """This process's rows of every global batch of one pass over `split`: preference rows for objectives on pairs,
  else unpacked rows (the last batch zero-padded: padding rows hold no pair and no target, so they add nothing to
  the sums, but an RL objective samples them; its metrics count every row)."""
  per = batch_size // jax.process_count()
  lo = jax.process_index() * per
  out = []
  if PREFERENCE_IDS in objective.features(layout):
    ds = preference_dataset(name, lengths, batch_size, seed=None, layout=layout, vocabulary=vocabulary, split=split)
  else:
    ds = validation_rows(name, lengths, batch_size, split=split, layout=layout, vocabulary=vocabulary)
  for b in ds:
    b = {k: v.numpy() for k, v in b.items()}
    short = batch_size - len(next(iter(b.values())))
    if short:
      b = {k: np.pad(v, ((0, short), (0, 0))) for k, v in b.items()}
    out.append({k: v[lo:lo + per] for k, v in b.items()})
  return out


class Validation:
  """The objective's metrics over fixed held-out batches: `(params, frozen) -> {metric: value}`."""

  def __init__(self, objective: Any, interface: Any, batches: list[dict[str, np.ndarray]], batch_sharding: Any):
    self.objective, self.batches, self.sharding = objective, batches, batch_sharding
    prepare = getattr(objective, "prepare", None)

    def sums(params, batch, frozen):
      if prepare is not None:  # rollouts with one fixed key: the same policy gives the same metrics
        batch = prepare(interface, params, batch, frozen, jnp.zeros((), jnp.int32))
      return objective.loss_sums(interface, params, batch, frozen, None)

    self._sums = jax.jit(sums)

  def __call__(self, params: Any, frozen: Mapping[str, Any]) -> dict[str, float]:
    total = None
    for local in self.batches:
      sums = self._sums(params, global_batch(local, self.sharding), dict(frozen))
      total = sums if total is None else jax.tree_util.tree_map(lambda a, b: a + b, total, sums)
    shape = (len(self.batches[0]["decoder_target_tokens"]) * jax.process_count(),
             self.batches[0]["decoder_target_tokens"].shape[1])
    metrics = self.objective.metrics(total, self.objective.normalizer(total, shape))
    return {k: float(v) for k, v in metrics.items()}
