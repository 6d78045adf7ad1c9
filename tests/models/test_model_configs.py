"""The standard-size model gin files build the published architectures (parameter counts as on the HF hub)."""

import os

import gin
import jax
import numpy as np
import pytest

from itjax import config
from itjax.models.families import build_model, example_inputs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Parameter counts of the HF checkpoints with these shapes (`sum(p.numel() for p in model.parameters())`).
KNOWN = {
    "t5_1_1_small": 76_961_152, "t5_1_1_base": 247_577_856, "t5_1_1_large": 783_150_080,
    "t5_1_1_xl": 2_849_757_184, "t5_1_1_xxl": 11_135_332_352,
    "flan_t5_small": 76_961_152, "flan_t5_base": 247_577_856, "flan_t5_large": 783_150_080,
    "flan_t5_xl": 2_849_757_184, "flan_t5_xxl": 11_135_332_352,
    "llama_1b": 1_235_814_400, "llama2_7b": 6_738_415_616, "llama3_8b": 8_030_261_248,
}


def _model_config(name: str):
  gin.clear_config()
  config.parse([os.path.join(REPO, "gin_configs", "models", f"{name}.gin")], [])
  return gin.query_parameter("%MODEL").scoped_configurable_fn()


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_standard_sizes_have_the_published_parameter_counts(name):
  cfg = _model_config(name)
  shapes = jax.eval_shape(lambda: build_model(cfg).init(jax.random.key(0), *example_inputs(cfg)))
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"])) == KNOWN[name]
  gin.clear_config()


def test_flan_t5_sets_its_fine_tuning_dropout():
  assert _model_config("flan_t5_base").dropout_rate == 0.05
  assert _model_config("t5_1_1_base").dropout_rate == 0.1
  gin.clear_config()
