"""Rank classification: pick the answer option the model finds most likely.

Every option is scored as a continuation of the prompt (with EOS, so that an
option that is a prefix of another is not favoured); the prediction is the
option with the highest total log-likelihood, and, as lm-evaluation-harness's
acc_norm, the highest log-likelihood per UTF-8 byte.

With several processes, every process runs the same batches: each is one global computation whose
rows are spread over all devices, and its scores are gathered so that every process has all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from itjax.models.families import interface_for


def rank_classify(model, params, rows: Sequence[dict], vocab: Any, *,
                  batch_size: int = 64) -> list[dict | None]:
  """Per row: {"option", "option_norm", "loglik"} for rows with options, else None."""
  pairs, owner = [], []
  for i, r in enumerate(rows):
    for opt in r.get("options") or ():
      pairs.append((r["input_ids"], list(vocab.encode(opt)) + [vocab.eos_id]))
      owner.append(i)
  if not pairs:
    return [None] * len(rows)
  scores, _ = interface_for(model).score(params, pairs, batch_size=batch_size)
  out: list[dict | None] = [None] * len(rows)
  owner = np.asarray(owner)
  for i, r in enumerate(rows):
    idx = np.nonzero(owner == i)[0]
    if not len(idx):
      continue
    opts = list(r["options"])
    s = scores[idx]
    per_byte = s / np.array([max(len(o.encode("utf-8")), 1) for o in opts])
    out[i] = {"option": opts[int(np.argmax(s))], "option_norm": opts[int(np.argmax(per_byte))],
              "loglik": [round(float(v), 4) for v in s]}
  return out
