"""Multi-host setup (`jax.distributed.initialize` from gin or environment variables) and the few
cross-process helpers the layers above share (a barrier, a JSON broadcast).

Set (any of) gin `initialize_distributed.coordinator_address / num_processes /
process_id`, or the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID, and run the same `itjax train` command
in every process. On Cloud TPU VMs nothing needs setting: JAX reads the
slice's workers from the TPU metadata. It must run before anything starts a
JAX backend, which is why `train` calls it first. On CPU, cross-process
collectives use gloo (JAX's default).
"""

from __future__ import annotations

import json
import logging
import os

import gin
import jax
import numpy as np
from jax.experimental import multihost_utils

from itjax.errors import UserError

try:
  from jax._src import hardware_utils  # what JAX itself checks before loading libtpu
except ImportError:  # a private module: if it moved, rely on the environment alone
  hardware_utils = None

log = logging.getLogger("itjax")


def _env_int(name: str) -> int | None:
  v = os.environ.get(name)
  return int(v) if v not in (None, "") else None


def _on_cloud_tpu() -> bool:
  """Cloud TPU chips here, or a TPU pod's environment (GKE, multislice); decided without starting a backend."""
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  if hardware_utils is None:
    return False
  try:
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # a private helper: if it moved, rely on the environment alone
    return False


@gin.configurable
def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto_detect_tpu: bool = True) -> bool:
  """Connects this process to the others; returns whether JAX now runs multi-process.

  A no-op when nothing is configured and no Cloud TPU is found, or when already initialized.
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if coordinator_address or num_processes is not None or process_id is not None:
    if not coordinator_address or num_processes is None or process_id is None:
      raise UserError("multi-process training needs all of initialize_distributed.coordinator_address, "
                      ".num_processes and .process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                      f"JAX_PROCESS_ID); got {coordinator_address!r}, {num_processes!r}, {process_id!r}")
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif auto_detect_tpu and _on_cloud_tpu():
    try:
      jax.distributed.initialize()  # JAX reads the slice's workers from the TPU metadata
    except (ValueError, RuntimeError) as e:
      log.warning("Cloud TPU detected but jax.distributed.initialize() failed (%s); continuing without it", e)
      return False
  else:
    return False
  if jax.process_index() != 0:
    log.setLevel(logging.WARNING)  # one console: process 0 reports progress
  log.info("process %d of %d; %d of %d devices local", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return jax.process_count() > 1


def sync(name: str) -> None:
  """A barrier across processes (a no-op with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def broadcast_json(obj):
  """Process 0's JSON-able value on every process."""
  if jax.process_count() == 1:
    return obj
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buf = np.zeros(n, np.uint8)
  buf[:data.size] = data
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode())
