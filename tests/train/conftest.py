"""A reference tiny run shared by the trainer tests: uninterrupted, every checkpoint kept."""

import pytest
from train_runs import REF_STEPS, train


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """REF_STEPS uninterrupted steps, a checkpoint every 2, MFU against a made-up 1 TFLOP/s peak."""
  d = tmp_path_factory.mktemp("reference")
  assert train(d, f"--gin.TRAIN_STEPS={REF_STEPS}", "--gin.CHECKPOINT_PERIOD=2",
               "--gin.train.peak_flops_per_device=1e12") == 0
  return d
