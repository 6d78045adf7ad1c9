"""Gin files declare what they require; a missing value is named, whichever way it is missing."""

import gin
import pytest

from itjax import config
from itjax.errors import UserError


def test_required_macro_declared_in_a_file(tmp_path):
  f = tmp_path / "needs.gin"
  f.write_text("include 'runs/finetune.gin'\nMODEL = @DecoderConfig()\n")
  with pytest.raises(UserError, match="missing required gin value MODEL_DIR"):
    config.parse([str(f)], [])
  # Each REQUIRED macro is reported until all are set.
  with pytest.raises(UserError, match="missing required gin value MIXTURE_OR_TASK_NAME"):
    config.parse([str(f)], ["MODEL_DIR='/tmp/x'"])
  config.parse([str(f)], ["MODEL_DIR='/tmp/x'", "MIXTURE_OR_TASK_NAME='proc_add_zs_noopt'",
                          "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}", "TRAIN_STEPS=1", "BATCH_SIZE=2"])
  assert gin.query_parameter("train.train_steps") is not None


def test_required_parameter_of_a_configurable_never_bound(tmp_path, capsys):
  from itjax.cli import main

  f = tmp_path / "bare.gin"
  f.write_text("train.train_steps = 1\n")  # nothing else: train.model_dir etc. stay gin.REQUIRED
  assert main(["train", f"--gin_file={f}"]) == 2
  err = capsys.readouterr().err
  assert "missing required gin value(s) train.model_dir" in err and len(err.strip().splitlines()) == 1


def test_required_parameter_set_to_required_in_file(tmp_path):
  f = tmp_path / "req.gin"
  f.write_text("train.seed = %gin.REQUIRED\n")
  with pytest.raises(UserError, match="missing required gin value train.seed"):
    config.parse([str(f)], [])
  config.parse([str(f)], ["train.seed=3"])
  assert gin.query_parameter("train.seed") == 3
