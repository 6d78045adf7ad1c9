"""The rows of zero-shot evaluation: every rendered eval example of a mixture's tasks, with its metadata.

Generation over them is `itjax.eval.predict`, rank classification `itjax.eval.rank`.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio

from itjax.data import truncation as trunc
from itjax.data.registry import leaf_tasks
from itjax.data.tasks import UNTRIMMED, task_info
from itjax.data.vocab import REGISTERED, with_vocabulary
from itjax.eval.settings import EVAL_SPLIT

META = ("task", "dataset", "cluster", "variant")


def eval_examples(mixture_or_task: str, feature_lengths: Mapping[str, int], max_per_task: int | None = None,
                  split: str = EVAL_SPLIT, vocabulary: seqio.Vocabulary | None = None,
                  truncation: str = trunc.KEEP_START) -> list[dict]:
  """Every rendered eval example of the leaf tasks (all templates), in a fixed order.

  `max_per_task` caps the source examples; each is rendered once per template, tokenized with
  `vocabulary` (default: as registered) and cut by its task's truncation policy (`truncation`
  for tasks that registered none). `inputs` is the text the model sees (decoded from the cut
  ids); a cut prompt also carries `inputs_untruncated` and `inputs_cut_tokens`.
  """
  rows = []
  vocab = vocabulary or REGISTERED
  for task in leaf_tasks(mixture_or_task):
    task = trunc.with_default(task if vocabulary is None else with_vocabulary(task, vocabulary), truncation)
    ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1, use_cached=False)
    if max_per_task:
      info = task_info(task)
      ds = ds.take(max_per_task * (info.eval_templates if info else 1))
    for ex in ds.as_numpy_iterator():
      row = {k: ex[k].decode() for k in META}
      ids = ex["inputs"].tolist()
      full = ex["inputs_pretokenized"].decode()
      cut = int(ex.get(UNTRIMMED["inputs"], len(ids))) - len(ids)
      row.update(template_id=int(ex["template_id"]), inputs=vocab.decode(ids) if cut > 0 else full,
                 target=ex["targets_pretokenized"].decode(), answer=ex["answer"].decode(),
                 options=[o.decode() for o in ex["options"]], input_ids=ids)
      if cut > 0:
        row.update(inputs_untruncated=full, inputs_cut_tokens=cut)
      rows.append(row)
  return rows
