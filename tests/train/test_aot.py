"""`itjax compile`: the train step compiled ahead of time, with a per-device memory report that adds up."""

import json
import math
import os

import jax
import numpy as np
import pytest
from train_runs import TINY

from itjax import config
from itjax.cli import main
from itjax.core import mesh as partitioning
from itjax.core.trainable import trainable_for
from itjax.errors import UserError
from itjax.models.peft_hooks import with_peft
from itjax.train import aot
from itjax.train.optim import make_optimizer
from itjax.train.settings import train_settings


def _parse(*bindings: str) -> None:
  config.parse([TINY], ["MODEL_DIR='unused'", *bindings])


def _sharded_bytes(tree) -> int:
  """Each leaf's bytes divided by the number of pieces its sharding cuts it into (rounded up per dimension)."""
  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    parts = [1] * x.ndim
    for i, axes in enumerate(x.sharding.spec):
      for a in (axes,) if isinstance(axes, str) else axes or ():
        parts[i] *= x.sharding.mesh.shape[a]
    total += math.prod(-(-d // p) for d, p in zip(x.shape, parts, strict=True)) * x.dtype.itemsize
  return total


def _abstract_state(peft: bool = True):
  """The abstract train state of gin's model (without its PEFT method, unless `peft`)."""
  cfg = train_settings().model_config
  optimizer, _ = make_optimizer()
  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  return trainable_for(cfg if peft else with_peft(cfg, None)).abstract_state(optimizer, mesh, rules)[0]


@pytest.mark.parametrize("mesh_shape", ["(8, 1, 1)", "(2, 4, 1)", "(1, 4, 2)"])
def test_local_compile_reports_consistent_memory(mesh_shape):
  # Even splits over tensor=2 need an even vocabulary and kv-head count (259 byte ids, 1 kv head in tiny.gin).
  _parse(f"create_mesh.mesh_shape={mesh_shape}", "DecoderConfig.vocab_size=260", "DecoderConfig.num_kv_heads=2")
  r = aot.compile_train_step()
  state = _abstract_state()
  assert r.num_devices == 8 and r.device_kind == "cpu"
  assert r.params_bytes == _sharded_bytes(state.params)
  assert r.opt_state_bytes == _sharded_bytes(state.opt_state)
  assert r.params_total_bytes == sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state.params))
  if mesh_shape != "(8, 1, 1)":
    assert r.params_bytes < r.params_total_bytes  # fsdp / tensor axes cut the parameters
  # Batch: 8 rows x 64 tokens x 5 int32 features, its rows split over data x fsdp.
  data_fsdp = math.prod(eval(mesh_shape)[:2])
  assert r.batch_bytes == 8 * 64 * 5 * 4 // data_fsdp
  # XLA's arguments are exactly our shards plus the int32 step counter; the state is donated.
  assert r.argument_bytes == r.params_bytes + r.opt_state_bytes + r.batch_bytes + 4
  assert r.params_bytes + r.opt_state_bytes <= r.alias_bytes <= r.output_bytes
  assert r.temp_bytes > 0
  assert r.total_bytes == r.argument_bytes + r.output_bytes - r.alias_bytes + r.temp_bytes + r.code_bytes
  assert r.hbm_bytes is None and r.fits is None  # a CPU has no known HBM
  assert "fit unknown" in r.table()


def test_compile_command_exit_status_and_json(tmp_path, capsys):
  args = ["compile", f"--gin_file={TINY}"]
  assert main([*args, "--per_device_hbm_gib=16", f"--json={tmp_path / 'r.json'}"]) == 0
  out = capsys.readouterr().out
  assert "FITS:" in out and "parameters (from shardings)" in out and "temporaries / activations" in out
  report = json.loads((tmp_path / "r.json").read_text())
  assert report["fits"] is True and report["hbm_bytes"] == 16 * 2**30
  assert main([*args, "--per_device_hbm_gib=0.0001"]) == 1
  assert "DOES NOT FIT" in capsys.readouterr().out


def test_compile_user_errors(capsys):
  assert main(["compile", f"--gin_file={TINY}", "--gin.create_mesh.mesh_shape=(1, 4, 2)"]) == 2
  assert "state.params['embedding'] of shape (259, 32) does not split evenly" in capsys.readouterr().err
  assert main(["compile", f"--gin_file={TINY}", "--gin.BATCH_SIZE=12"]) == 2
  assert "train.batch_size=12 must divide by the 8 batch shards" in capsys.readouterr().err
  assert main(["compile", f"--gin_file={TINY}", "--topology=v3-8"]) == 2
  assert "--topology='v3-8'" in capsys.readouterr().err


@pytest.mark.parametrize("name,topology,chip,wrap,chips", [
    ("v4-8", "v4:2x2x1", "megacore", (False,) * 3, 4),
    ("v4-32", "v4:2x2x4", "megacore", (False,) * 3, 16),
    ("v4-128", "v4:4x4x4", "megacore", (True,) * 3, 64),
    ("v5p-128", "v5:4x4x4", "megacore", (True,) * 3, 64),
    ("v5p-256", "v5:4x4x8", "megacore", (True,) * 3, 128),
    ("v5e-16", "v5e:4x4", "default", (False,) * 3, 16),
    ("v5litepod-128", "v5e:8x16", "default", (False, True, False), 128),
    ("v5litepod-256", "v5e:16x16", "default", (True, True, False), 256),
    ("v6e-8", "v6e:2x4", "default", (False,) * 3, 8),
    ("v4:4x4x12", "v4:4x4x12", "megacore", (True,) * 3, 192),
])
def test_parse_topology(name, topology, chip, wrap, chips):
  t = aot.parse_topology(name)
  assert (t.topology_name, t.chip_config_name, t.wrap, t.num_chips) == (topology, chip, wrap, chips)


@pytest.mark.parametrize("bad", ["v3-8", "v4-24", "v5e", "v4:2x2", "tpu"])
def test_parse_topology_rejects(bad):
  with pytest.raises(UserError, match="--topology="):
    aot.parse_topology(bad)


def _has_libtpu() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


@pytest.mark.skipif(not _has_libtpu(), reason="TPU topologies need libtpu: pip install -e '.[tpu]' "
                    "(only this TPU-target part is skipped; the local-device compile is tested above)")
def test_tpu_topology_compile_without_tpus():
  """v4-32's 16 compile-only TPU v4 devices, from libtpu on a machine without TPUs."""
  _parse("BATCH_SIZE=32", "create_mesh.mesh_shape=(-1, 2, 1)")
  r = aot.compile_train_step(topology="v4-32")
  assert (r.num_devices, r.device_kind, r.mesh_shape) == (16, "TPU v4", {"data": 8, "fsdp": 2, "tensor": 1})
  assert r.hbm_bytes == 32 * 2**30 and r.fits is True
  assert r.params_bytes < r.params_total_bytes
  assert r.argument_bytes >= r.params_bytes + r.opt_state_bytes + r.batch_bytes  # TPU pads small arrays to tiles
  assert r.temp_bytes > 0 and r.code_bytes > 0
  _parse("BATCH_SIZE=32")
  assert aot.compile_train_step(topology="v5e-16", per_device_hbm_gib=1e-4).fits is False
  assert os.environ.get("TPU_ACCELERATOR_TYPE") is None  # the metadata stand-ins are removed again
  np.testing.assert_equal(aot.parse_topology("v4-32").num_chips, 16)


def test_compile_with_lora_measures_the_trainable_state_and_the_frozen_base(capsys):
  """The PEFT step `itjax train` runs: LoRA variables and their optimizer state donated, the base read beside."""
  _parse("train.peft=@lora()", "lora.rank=4", "lora.base_dtype='bfloat16'")
  r = aot.compile_train_step()
  full = _abstract_state(peft=False)  # the same model fully fine-tuned
  assert 0 < r.params_bytes < r.frozen_bytes / 10
  assert r.opt_state_bytes < sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(full.opt_state)) / 10
  # The base is stored in bfloat16: half the bytes of the fp32 params of the full model, spread over 8 devices.
  assert r.frozen_bytes * 2 == _sharded_bytes(full.params)
  assert r.argument_bytes == r.params_bytes + r.opt_state_bytes + r.frozen_bytes + r.batch_bytes + 4
  assert r.params_bytes + r.opt_state_bytes <= r.alias_bytes  # the trainable state is donated, the base is not
  assert r.alias_bytes < r.params_bytes + r.opt_state_bytes + r.frozen_bytes
  assert main(["compile", f"--gin_file={TINY}", "--gin.train.peft=@lora()"]) == 0
  assert "frozen base (from shardings)" in capsys.readouterr().out
