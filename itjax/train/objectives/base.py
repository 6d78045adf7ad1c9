"""The interface an objective gives the train step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax

from itjax.models.features import FeatureLayout

Batch = Mapping[str, jax.Array]
Sums = dict[str, jax.Array]


class Objective(Protocol):
  """A training objective. Sums add up over microbatches, so accumulation gives the full-batch update."""

  name: str
  frozen_trees: tuple[str, ...]  # frozen trees it reads beside the model's (e.g. a DPO reference policy)

  def features(self, layout: FeatureLayout) -> tuple[str, ...]:
    """The batch arrays it reads, for a model of `layout`."""
    ...

  def batch_lengths(self, layout: FeatureLayout, feature_lengths: Mapping[str, int], pack: bool) -> dict[str, int]:
    """The length of each batch array at TASK_FEATURE_LENGTHS `feature_lengths`."""
    ...

  # Optional, for objectives that make their own data (RL): `prepare(iface, params, batch, frozen, step) -> batch`
  # runs before the gradient, on the current policy (e.g. rollouts, rewards, advantages), and its batch is the one
  # `loss_sums` sees.

  def loss_sums(self, iface: Any, params: Any, batch: Batch, frozen: Mapping[str, Any],
                dropout_rng: jax.Array | None) -> Sums:
    """Additive sums over `batch`; `"loss"` is differentiated (then divided by `normalizer`)."""
    ...

  def normalizer(self, sums: Sums, batch_shape: tuple[int, ...]) -> jax.Array:
    """What the summed loss (and its gradient) is divided by, for a global batch of `batch_shape`."""
    ...

  def metrics(self, sums: Sums, denom: jax.Array) -> dict[str, jax.Array]:
    """Scalars to log (at least "loss"), from the summed terms and the normalizer."""
    ...
