"""tests/synth: the tiny model and in-process `itjax serve` helpers live in tests/serve/serve_helpers.py."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serve"))

from serve_helpers import make_model_dir, start_server  # noqa: E402


@pytest.fixture(scope="session")
def served_tiny_model(tmp_path_factory):
  """`itjax serve` with an untrained tiny model: garbage text, real plumbing."""
  srv = start_server(make_model_dir(tmp_path_factory.mktemp("synth_model")), max_batch=4, batch_wait_s=0.02)
  yield srv
  srv.close()
