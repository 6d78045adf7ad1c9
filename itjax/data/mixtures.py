"""Held-out-cluster mixtures (the FLAN protocol) and their overlap check.

`<prefix>_heldout_<cluster>` trains on every task except those in the held-out
cluster *and in every cluster that any of its datasets belongs to*;
`<prefix>_heldout_<cluster>_eval` holds the held-out cluster's tasks. A
mixture whose train and eval sides share a dataset is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import seqio

from itjax.data import templates as tmpl
from itjax.data.tasks import TaskInfo, task_info

# FLAN: a dataset contributes at most 3k examples' worth of mixing rate.
DEFAULT_RATE_CAP = 3000


def heldout_split(infos: Sequence[TaskInfo], cluster: str) -> tuple[list[TaskInfo], list[TaskInfo]]:
  """(train, eval) task infos for holding out `cluster`.

  Eval: the tasks whose primary cluster it is. Excluded from training: every
  cluster that any dataset listed in the held-out cluster belongs to.
  """
  eval_side = [t for t in infos if t.cluster == cluster]
  if not eval_side:
    raise ValueError(f"no tasks in cluster {cluster!r}")
  members = [t for t in infos if cluster in t.clusters]
  excluded = {c for t in members for c in t.clusters}
  train = [t for t in infos if not excluded & set(t.clusters)]
  check_disjoint(train, eval_side, cluster)
  return train, eval_side


def check_disjoint(train: Sequence[TaskInfo], evals: Sequence[TaskInfo], what: str) -> None:
  shared = {t.dataset for t in train} & {t.dataset for t in evals}
  if shared:
    raise ValueError(f"held-out mixture {what!r}: train and eval share datasets {sorted(shared)}")


def eval_variant(infos: Sequence[TaskInfo]) -> list[TaskInfo]:
  """One task per dataset for (zero-shot) evaluation: with options where the dataset has them."""
  want = {t.dataset: (tmpl.ZERO_SHOT_OPT if t.has_options else tmpl.ZERO_SHOT_NOOPT) for t in infos}
  return [t for t in infos if t.variant == want[t.dataset]]


def variant_counts(infos: Sequence[TaskInfo]) -> dict[str, int]:
  """Tasks per dataset: its variants (zs_opt, zs_noopt, few-shot, ...) in a mixture."""
  out: dict[str, int] = {}
  for t in infos:
    out[t.dataset] = out.get(t.dataset, 0) + 1
  return out


def dataset_rate(task: seqio.Task, *, variants: dict[str, int], rate_cap: int = DEFAULT_RATE_CAP,
                 temperature: float = 1.0) -> float:
  """A task's rate: its dataset's capped examples-proportional rate, shared equally by the dataset's variants
  in the mixture (as FLAN shares a dataset's weight across its templates), so that a dataset with options
  weighs what one without them does."""
  info = task_info(task)
  share = variants.get(info.dataset, 1) if info else 1
  return seqio.mixing_rate_num_examples(task, maximum=rate_cap, temperature=temperature) / share


def register_heldout_mixtures(prefix: str, task_names: Sequence[str], rate_cap: int = DEFAULT_RATE_CAP,
                              temperature: float = 1.0) -> list[str]:
  """Registers train/eval mixtures holding out each cluster; returns the names.

  Training rates are examples-proportional with each dataset capped at
  `rate_cap` examples (FLAN); `temperature` > 1 flattens them (rate ∝ n^(1/T)). The cap and the
  rate are per dataset: its variants share them (`dataset_rate`). Every task must
  carry its metadata (`task_info`), which is where the clusters come from.
  """
  infos = [task_info(n) for n in task_names]
  plain = [n for n, info in zip(task_names, infos, strict=True) if info is None]
  if plain:
    raise ValueError(f"held-out mixtures {prefix!r}: tasks {plain} carry no instruction-task metadata "
                     "(register them with itjax.data.tasks)")
  names = []
  for cluster in sorted({t.cluster for t in infos}):
    train, evals = heldout_split(infos, cluster)
    name = f"{prefix}_heldout_{cluster}"
    seqio.MixtureRegistry.add(name, [t.name for t in train],
                              default_rate=functools.partial(dataset_rate, variants=variant_counts(train),
                                                             rate_cap=rate_cap, temperature=temperature))
    seqio.MixtureRegistry.add(f"{name}_eval", [t.name for t in eval_variant(evals)], default_rate=1.0)
    seen = eval_variant(train)
    seqio.MixtureRegistry.add(f"{name}_seen_eval", [t.name for t in seen], default_rate=1.0)
    names += [name, f"{name}_eval", f"{name}_seen_eval"]
  return names
