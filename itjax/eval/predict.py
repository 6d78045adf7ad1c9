"""Greedy generation of text for prompt token ids, in fixed-size batches (one compilation).

With several processes (`jax.process_count() > 1`) every process holds every row and runs the same
batches: each is one global computation whose rows are spread over all devices (as training batches
are), and its output is gathered so that every process, process 0 included, has every prediction.
Reads no task data, so `itjax infer` imports neither TensorFlow nor seqio.
"""

from __future__ import annotations

from typing import Any

from itjax.models.decoding import strip_eos
from itjax.models.families import interface_for


def predict(model: Any, params: Any, rows: list[dict], vocab: Any, *, batch_size: int,
            max_new_tokens: int) -> list[str]:
  """Greedy continuations of each row's prompt (its `input_ids`, as the model was trained), decoded to text.

  `model` is a model interface (or a config / module of any family); `vocab` anything with encode /
  decode / eos_id (a seqio vocabulary or an `itjax.core.tokenizer.Tokenizer`). Call inside the mesh /
  logical-axis-rules context that the params are sharded for.
  """
  iface = interface_for(model)
  preds = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    prompts = [r["input_ids"] for r in chunk]
    prompts += [prompts[-1]] * (batch_size - len(prompts))  # full batches: one compilation
    out = iface.generate(params, prompts, max_new_tokens=max_new_tokens, eos_id=vocab.eos_id)[: len(chunk)]
    preds += [vocab.decode(strip_eos(o, vocab.eos_id)) for o in out]
  return preds
