"""itjax's registry of concrete tasks and mixtures (import name: `itjax_tasks`).

Importing this package registers every task and mixture with seqio; no data
is read until a task is used.
- `procedural`: generated offline tasks (`proc_*`), six clusters, the offline default.
- `preference`: procedural preference pairs and rankings (`proc_pref_*`), for DPO, reward models and RLHF.
- `flan`: the FLAN collection as TFDS-backed tasks (`flan_*`), with FLAN's held-out mixtures.
"""

from itjax_tasks import flan, preference, procedural  # noqa: F401  (registers on import)
