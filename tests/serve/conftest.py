"""A tiny random MODEL_DIR and an `itjax serve` on loopback, shared by the tests in this folder."""

import pytest
from serve_helpers import make_model_dir, start_server


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
  return make_model_dir(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="session")
def server(model_dir):
  srv = start_server(model_dir, max_batch=4, batch_wait_s=0.05)
  yield srv
  srv.close()
