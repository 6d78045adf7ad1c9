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

from itjax.eval.predict import Progress
from itjax.models.families import interface_for


def rank_classify(model, params, rows: Sequence[dict], vocab: Any, *, batch_size: int = 64,
                  progress: str = "rank classification") -> list[dict | None]:
  """Per row: {"option", "option_norm", "loglik"} for rows with options, else None.

  Scored a batch of (prompt, option) pairs at a time, saying how far it got (`progress`: the lines' label).
  """
  pairs, owner = [], []
  for i, r in enumerate(rows):
    for opt in r.get("options") or ():
      pairs.append((r["input_ids"], list(vocab.encode(opt)) + [vocab.eos_id]))
      owner.append(i)
  if not pairs:
    return [None] * len(rows)
  iface = interface_for(model)
  with_options = np.cumsum([bool(r.get("options")) for r in rows])  # rows with options up to each row
  bar = Progress(progress, int(with_options[-1]), unit="rows with options")
  parts = []
  for start in range(0, len(pairs), batch_size):
    parts.append(iface.score(params, pairs[start:start + batch_size], batch_size=batch_size)[0])
    end = min(start + batch_size, len(pairs))
    last = owner[end - 1]  # the row of the last pair scored: finished unless its next pair is still to come
    finished = last if end == len(pairs) or owner[end] != last else last - 1
    bar.update(int(with_options[finished]) if finished >= 0 else 0, rows[last].get("task", ""))
  bar.finish()
  scores = np.concatenate(parts)
  out: list[dict | None] = [None] * len(rows)
  start = 0  # pairs are in row order: row i's are the next len(options)
  for i, r in enumerate(rows):
    opts = list(r.get("options") or ())
    if not opts:
      continue
    s = scores[start:start + len(opts)]
    start += len(opts)
    per_byte = s / np.array([max(len(o.encode("utf-8")), 1) for o in opts])
    out[i] = {"option": opts[int(np.argmax(s))], "option_norm": opts[int(np.argmax(per_byte))],
              "loglik": [round(float(v), 4) for v in s]}
  return out
