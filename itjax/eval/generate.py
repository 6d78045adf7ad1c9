"""Zero-shot evaluation by generation: eval examples -> greedy predictions -> scores.

With several processes (`jax.process_count() > 1`) every process holds every eval row and runs the
same batches: each is one global computation whose rows are spread over all devices (as training
batches are), and its output is gathered so that every process, process 0 included, has every prediction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import seqio

from itjax.data.registry import leaf_tasks
from itjax.data.tasks import TASK_INFO
from itjax.models.decoding import strip_eos
from itjax.models.interface import interface_for

EVAL_SPLIT = "validation"
META = ("task", "dataset", "cluster", "variant")


def eval_examples(mixture_or_task: str, feature_lengths: Mapping[str, int], max_per_task: int | None = None,
                  split: str = EVAL_SPLIT) -> list[dict]:
  """Every rendered eval example of the leaf tasks (all templates), in a fixed order.

  `max_per_task` caps the source examples; each is rendered once per template.
  """
  rows = []
  for task in leaf_tasks(mixture_or_task):
    ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1, use_cached=False)
    if max_per_task:
      info = TASK_INFO.get(task.name)
      ds = ds.take(max_per_task * (info.eval_templates if info else 1))
    for ex in ds.as_numpy_iterator():
      row = {k: ex[k].decode() for k in META}
      row.update(template_id=int(ex["template_id"]), inputs=ex["inputs_pretokenized"].decode(),
                 target=ex["targets_pretokenized"].decode(), answer=ex["answer"].decode(),
                 options=[o.decode() for o in ex["options"]],
                 input_ids=ex["inputs"].tolist())
      rows.append(row)
  return rows


def _batches(rows: list[dict], batch_size: int) -> Iterator[list[dict]]:
  for i in range(0, len(rows), batch_size):
    yield rows[i:i + batch_size]


def predict(model, params, rows: list[dict], vocab: seqio.Vocabulary, *, batch_size: int,
            max_new_tokens: int) -> list[str]:
  """Greedy continuations of each row's prompt (its input ids, as the model was trained), decoded to text.

  Works for decoder-only and encoder-decoder models. Call inside the mesh / logical-axis-rules
  context that the params are sharded for.
  """
  iface = interface_for(model)
  preds = []
  for chunk in _batches(rows, batch_size):
    prompts = [r["input_ids"] for r in chunk]
    prompts += [prompts[-1]] * (batch_size - len(prompts))  # full batches: one compilation
    out = iface.generate(params, prompts, max_new_tokens=max_new_tokens, eos_id=vocab.eos_id)[: len(chunk)]
    preds += [vocab.decode(strip_eos(o, vocab.eos_id)) for o in out]
  return preds
