"""itjax's registry of concrete tasks and mixtures (import name: `itjax_tasks`).

Importing this package registers every task and mixture with seqio; no data
is read until a task is used.
"""

from itjax_tasks import procedural  # noqa: F401  (registers on import)
