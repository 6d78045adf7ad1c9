"""Test setup: 8 host CPU devices so that sharded code paths run everywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# JSONL scan results (itjax.data.scan_cache) go to a directory of this test session, not the user's cache.
if "ITJAX_SCAN_CACHE" not in os.environ:
  import tempfile

  os.environ["ITJAX_SCAN_CACHE"] = tempfile.mkdtemp(prefix="itjax_scan_cache_")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _registry():
  import itjax_tasks  # noqa: F401  (registers tasks and mixtures)
