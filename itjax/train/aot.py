"""Ahead-of-time compilation of the train step: will this config fit a TPU pod, before paying for one?

`itjax compile` builds exactly what `itjax train` builds from the same gin files (`itjax.train.build`:
model, trainable-state strategy (full or PEFT), optimizer, mesh, logical-axis rules, state, batch and
frozen-tree shardings, the jitted step with donated state), lowers it against abstract inputs
(`jax.ShapeDtypeStruct`s carrying shardings, nothing allocated) and compiles it, as MaxText's
`train_compile.py` does. It reads no task data: neither TensorFlow nor seqio is imported. The
target is either the local devices or a Cloud TPU topology such as `v5p-128`, described by
`jax.experimental.topologies` through `libtpu` (`pip install -e '.[tpu]'`; it works on a machine
without TPUs). XLA's per-device memory analysis then says whether the step fits the device's HBM;
on TPU the compiler itself refuses a step that does not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax._src import xla_bridge
from jax.experimental import topologies

from itjax.errors import UserError
from itjax.train.build import build
from itjax.train.settings import TrainSettings, train_settings

try:
  from jax._src import hardware_utils  # what JAX itself checks before loading libtpu
except ImportError:  # a private module: if it moved, rely on the environment alone
  hardware_utils = None

GIB = 1024**3
# HBM per JAX device (a v4/v5p "megacore" chip is one device; a v2/v3 chip is two), by `device_kind`.
KNOWN_HBM_GIB = {"TPU v2": 8, "TPU v3": 16, "TPU v4": 32, "TPU v5 lite": 16, "TPU v5e": 16, "TPU v5": 95,
                 "TPU v5p": 95, "TPU v6 lite": 32, "TPU v6e": 32}
# Accelerator type (as `gcloud` names it) -> topology name prefix, chip config, dims, TPU cores per chip.
_GENERATIONS = {"v4": ("v4", "megacore", 3, 2), "v5p": ("v5", "megacore", 3, 2), "v5e": ("v5e", "default", 2, 1),
                "v5litepod": ("v5e", "default", 2, 1), "v6e": ("v6e", "default", 2, 1)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A Cloud TPU slice as `jax.experimental.topologies.get_topology_desc` wants it."""

  accelerator_type: str  # e.g. "v4-32"
  topology_name: str  # e.g. "v4:2x2x4"
  chip_config_name: str  # "megacore" (v4, v5p) or "default"
  chips_per_host_bounds: tuple[int, int, int]
  wrap: tuple[bool, bool, bool]

  @property
  def num_chips(self) -> int:
    return math.prod(int(d) for d in self.topology_name.split(":")[1].split("x"))


def _chip_dims(chips: int, ndim: int) -> list[int]:
  """Cloud TPU's standard slice shapes: 2x2(x1), then the last of the smallest dimensions doubles."""
  dims = [1] * ndim if chips == 1 else [2, 2] + [1] * (ndim - 2)
  while math.prod(dims) < chips:
    smallest = min(dims)
    dims[max(i for i, d in enumerate(dims) if d == smallest)] *= 2
  return dims


def parse_topology(name: str) -> Topology:
  """`v4-32`, `v5p-128`, `v5e-16` / `v5litepod-16`, `v6e-64` (cores as gcloud counts them), or `v4:2x2x4`."""
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
  raw = re.fullmatch(r"(v4|v5|v5e|v6e):(\d+(?:x\d+){1,2})", name)
  if not m and not raw:
    raise UserError(f"--topology={name!r}: expected a TPU type such as v4-32, v5p-128, v5e-16, v6e-64 "
                    "(or a topology such as v4:2x2x4)")
  if raw:
    prefix, dims = raw.group(1), [int(d) for d in raw.group(2).split("x")]
    gen = {"v5": "v5p"}.get(prefix, prefix)
    _, chip_config, ndim, cores = _GENERATIONS[gen]
    if len(dims) != ndim:
      raise UserError(f"--topology={name!r}: {prefix} topologies have {ndim} dimensions")
    accelerator = f"{gen}-{math.prod(dims) * cores}"
  else:
    gen, cores_total = m.group(1), int(m.group(2))
    prefix, chip_config, ndim, cores = _GENERATIONS[gen]
    chips = cores_total // cores
    if cores_total % cores or chips < 1 or chips & (chips - 1):
      raise UserError(f"--topology={name!r}: {gen} slices come in powers of two of {cores} core(s) per chip "
                      f"(e.g. {gen}-{8 * cores}); give other shapes as {prefix}:AxBxC")
    dims = _chip_dims(chips, ndim)
    accelerator = name
  if ndim == 3:
    wrap = (all(d % 4 == 0 for d in dims),) * 3  # full 4x4x4 cubes get wrap-around links
  else:
    wrap = (dims[0] == 16, dims[1] == 16, False)
  bounds = (1, 1, 1) if math.prod(dims) == 1 else (2, 2, 1)
  return Topology(accelerator, f"{prefix}:{'x'.join(map(str, dims))}", chip_config, bounds, wrap)


def _local_tpu_chips() -> int:
  if hardware_utils is None:
    return 1  # assume a TPU VM and change nothing
  try:
    return hardware_utils.num_available_tpu_chips_and_device_id()[0]
  except Exception:  # a private helper: if it moved, assume a TPU VM and change nothing
    return 1


def topology_devices(topology: Topology, num_slices: int = 1) -> list:
  """Compile-only devices of a TPU topology (needs `libtpu`, not TPUs)."""
  fake = {}
  if not _local_tpu_chips():
    # Off a TPU VM, libtpu looks for the VM's metadata and prints warnings (these answers silence it), and
    # takes a lock meant for TPU chips, which would keep two compiles from running side by side.
    fake = {"TPU_ACCELERATOR_TYPE": topology.accelerator_type, "TPU_WORKER_HOSTNAMES": "localhost",
            "TPU_WORKER_ID": "0", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    fake = {k: v for k, v in fake.items() if k not in os.environ}
  os.environ.update(fake)
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topology.topology_name, chip_config_name=topology.chip_config_name,
        chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=num_slices, wrap=topology.wrap)
  except RuntimeError as e:
    if "TPU support not installed" in str(e):
      raise UserError("--topology needs libtpu (compile-only TPU devices): pip install -e '.[tpu]'") from None
    raise UserError(f"--topology={topology.accelerator_type} ({topology.topology_name}): {str(e).splitlines()[0]}") \
        from None
  finally:
    for k in fake:
      os.environ.pop(k, None)
  return list(desc.devices)


def _use_cpu_backend() -> None:
  """A TPU-topology compile needs no local accelerator: keep libtpu from probing for one (and warning)."""
  if not os.environ.get("JAX_PLATFORMS") and not xla_bridge.backends_are_initialized():
    jax.config.update("jax_platforms", "cpu")


def _axes(entry) -> tuple[str, ...]:
  """Mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def check_divisible(state) -> None:
  """Every state array splits evenly over its mesh axes (as `train` needs), else a UserError naming it."""
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    spec = tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(x.sharding.spec))
    for dim, entry in zip(x.shape, spec, strict=True):
      parts = math.prod(x.sharding.mesh.shape[a] for a in _axes(entry))
      if dim % parts:
        raise UserError(f"state{jax.tree_util.keystr(path)} of shape {tuple(x.shape)} does not split evenly over "
                        f"mesh axes {_axes(entry)} ({parts} devices; mesh {dict(x.sharding.mesh.shape)}): change "
                        "create_mesh.mesh_shape, logical_axis_rules or that model dimension")


def per_device_bytes(tree) -> int:
  """Bytes of one device's shards of a tree of sharded ShapeDtypeStructs (even splits: `check_divisible`)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(tree))


def total_bytes(tree) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


@dataclasses.dataclass
class MemoryReport:
  """Per-device memory of the compiled train step: ours from the shardings, XLA's from the executable."""

  target: str
  device_kind: str
  num_devices: int
  mesh_shape: dict[str, int]
  batch: str
  params_bytes: int  # one device's shards of the trainable params, computed from the shardings
  opt_state_bytes: int
  batch_bytes: int
  params_total_bytes: int  # the whole model (trainable and frozen), unsharded
  frozen_bytes: int = 0  # a PEFT run's frozen base
  argument_bytes: int | None = None  # from XLA's memory analysis
  output_bytes: int | None = None
  alias_bytes: int | None = None
  temp_bytes: int | None = None
  code_bytes: int | None = None
  hbm_bytes: int | None = None
  compile_error: str | None = None  # XLA refused (on TPU: out of HBM)

  @property
  def total_bytes(self) -> int | None:
    """Peak estimate: arguments + outputs not aliased to donated arguments + temporaries + code."""
    if self.argument_bytes is None:
      return None
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

  @property
  def fits(self) -> bool | None:
    if self.compile_error is not None:
      return False
    if self.hbm_bytes is None or self.total_bytes is None:
      return None
    return self.total_bytes <= self.hbm_bytes

  def as_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "fits": self.fits}

  def table(self) -> str:
    """The per-device memory table and a FITS / DOES NOT FIT verdict, as `itjax compile` prints it."""
    mesh = " ".join(f"{k}={v}" for k, v in self.mesh_shape.items())
    lines = [f"train step compiled for {self.target}: {self.num_devices} x {self.device_kind}, mesh {mesh}, "
             f"batch {self.batch}",
             f"model: {_fmt(self.params_total_bytes)} of parameters in all",
             "", "per device", f"{'parameters (from shardings)':<34}{_col(self.params_bytes)}",
             f"{'optimizer state (from shardings)':<34}{_col(self.opt_state_bytes)}",
             *([f"{'frozen base (from shardings)':<34}{_col(self.frozen_bytes)}"] if self.frozen_bytes else []),
             f"{'batch (from shardings)':<34}{_col(self.batch_bytes)}"]
    if self.compile_error is None:
      lines += [f"{'arguments (XLA)':<34}{_col(self.argument_bytes)}",
                f"{'outputs (XLA)':<34}{_col(self.output_bytes)}",
                f"{'outputs in donated buffers':<34}{_col(-self.alias_bytes)}",
                f"{'temporaries / activations (XLA)':<34}{_col(self.temp_bytes)}",
                f"{'generated code (XLA)':<34}{_col(self.code_bytes)}",
                f"{'total':<34}{_col(self.total_bytes)}"]
    if self.hbm_bytes is not None:
      lines.append(f"{'device memory (HBM)':<34}{_col(self.hbm_bytes)}")
    ours = self.params_bytes + self.opt_state_bytes + self.frozen_bytes + self.batch_bytes
    if self.argument_bytes is not None and self.argument_bytes > ours + 64:
      lines.append("(XLA's arguments exceed the shards' bytes by the padding of small arrays to TPU tiles)")
    lines.append("")
    if self.compile_error is not None:
      lines.append(f"DOES NOT FIT: XLA refused to compile: {self.compile_error}")
    elif self.fits is None:
      lines.append("fit unknown: no memory size known for this device kind; pass --per_device_hbm_gib")
    else:
      pct = 100 * self.total_bytes / self.hbm_bytes
      lines.append(f"{'FITS' if self.fits else 'DOES NOT FIT'}: {_fmt(self.total_bytes)} of "
                   f"{_fmt(self.hbm_bytes)} per device ({pct:.1f}%)")
    return "\n".join(lines)


def _fmt(n: int) -> str:
  """Bytes in the largest binary unit that keeps the number at least 1."""
  for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"


def _col(n: int) -> str:
  return f"{_fmt(n):>14}"


def device_hbm_bytes(device) -> int | None:
  """Memory of one device: what the runtime reports, else the known size of its TPU generation."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # compile-only devices and CPUs have none
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  gib = KNOWN_HBM_GIB.get(device.device_kind)
  return None if gib is None else int(gib * GIB)


def _oom_message(e: Exception) -> str | None:
  msg = str(e)
  if "RESOURCE_EXHAUSTED" in msg or "Ran out of memory" in msg or "out of memory" in msg.lower():
    lines = [s.strip() for s in msg.splitlines() if s.strip()]
    return " ".join(lines[:2])[:500]
  return None


def compile_train_step(*, topology: str | None = None, num_slices: int = 1, per_device_hbm_gib: float | None = None,
                       settings: TrainSettings | None = None) -> MemoryReport:
  """Compiles `train`'s step for `topology` (e.g. "v5p-128") or the local devices; returns its memory report."""
  if topology:
    _use_cpu_backend()
    topo = parse_topology(topology)
    devices, target = topology_devices(topo, num_slices), f"{topo.accelerator_type} ({topo.topology_name}" + (
        f", {num_slices} slices)" if num_slices > 1 else ")")
  else:
    devices, target = jax.devices(), f"the local devices ({jax.devices()[0].platform})"
  s = settings if settings is not None else train_settings()
  b = build(s, devices=devices)
  state = b.abstract_state
  check_divisible(state)
  frozen = b.frozen_abstract()
  check_divisible(frozen)
  batch = b.abstract_batch()
  hbm = int(per_device_hbm_gib * GIB) if per_device_hbm_gib else device_hbm_bytes(devices[0])
  length = " + ".join(f"{v}" for v in s.task_feature_lengths.values())
  report = MemoryReport(
      target=target, device_kind=devices[0].device_kind, num_devices=len(devices), mesh_shape=dict(b.mesh.shape),
      batch=f"{s.batch_size} x ({length}) tokens" + (f" in {s.num_microbatches} microbatches"
                                                     if s.num_microbatches > 1 else ""),
      params_bytes=per_device_bytes(state.params), opt_state_bytes=per_device_bytes(state.opt_state),
      frozen_bytes=per_device_bytes(frozen), batch_bytes=per_device_bytes(batch),
      params_total_bytes=total_bytes((state.params, frozen)), hbm_bytes=hbm)
  with jax.set_mesh(b.mesh), nn.logical_axis_rules(b.rules):
    lowered = b.step_fn.lower(state, batch, frozen)
  try:
    compiled = lowered.compile()
  except Exception as e:  # XLA's out-of-HBM error on TPU is the answer, not a crash
    if (msg := _oom_message(e)) is None:
      raise
    report.compile_error = msg
    return report
  mem = compiled.memory_analysis()
  if mem is None:
    raise UserError(f"XLA gives no memory analysis for {target}")
  report.argument_bytes, report.output_bytes = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  report.alias_bytes, report.temp_bytes = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
  report.code_bytes = int(mem.generated_code_size_in_bytes)
  return report


def compile_command(*, topology: str | None, num_slices: int, per_device_hbm_gib: float | None,
                    json_path: str | None = None) -> int:
  """`itjax compile`: prints the memory table; 0 when it fits (or no limit is known), 1 when it does not."""
  report = compile_train_step(topology=topology, num_slices=num_slices, per_device_hbm_gib=per_device_hbm_gib)
  print(report.table())
  if json_path:
    with open(json_path, "w") as f:
      json.dump(report.as_dict(), f, indent=1)
  return 1 if report.fits is False else 0
