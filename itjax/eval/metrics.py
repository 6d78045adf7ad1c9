"""Scoring predictions against gold answers."""

from __future__ import annotations

from collections.abc import Sequence


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> float:
  """Percentage of predictions equal to the target after stripping surrounding whitespace."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    return float("nan")
  return 100.0 * sum(t.strip() == p.strip() for t, p in zip(targets, predictions, strict=True)) / len(targets)
