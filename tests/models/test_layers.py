"""MlpBlock dropout: where it acts (hidden activations, before the output projection) and its T5 wiring."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from itjax.models.layers import MlpBlock
from itjax.models.t5 import T5, T5Config


def test_mlp_dropout_drops_hidden_units_before_the_output_projection():
  # mlp_dim == emb_dim and wo = identity: the output *is* the (dropped) hidden activation.
  block = MlpBlock(8, 8, "relu", gated=False, dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 16, 8))
  params = {"wi_0": np.asarray(jax.random.normal(jax.random.key(1), (8, 8))), "wo": np.eye(8, dtype=np.float32)}
  hidden = np.asarray(jax.nn.relu(x @ params["wi_0"]))
  np.testing.assert_allclose(block.apply({"params": params}, x), hidden, rtol=1e-6)  # deterministic by default
  out = np.asarray(block.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(2)}))
  kept = out != 0
  np.testing.assert_allclose(out[kept], 2 * hidden[kept], rtol=1e-6)  # survivors scaled by 1 / (1 - rate)
  live = hidden > 0
  assert 0.35 < 1 - kept[live].mean() < 0.65  # about half of the live units dropped


def test_t5_mlp_gets_the_dropout_rate():
  cfg = T5Config(vocab_size=16, emb_dim=8, num_encoder_layers=1, num_decoder_layers=1, num_heads=2, head_dim=4,
                 mlp_dim=8, dropout_rate=0.3)
  seen = []

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, MlpBlock) and context.method_name == "__call__":
      seen.append((context.module.dropout_rate, kwargs.get("deterministic", args[1] if len(args) > 1 else None)))
    return next_fun(*args, **kwargs)

  tokens = jnp.zeros((1, 4), jnp.int32)
  with nn.intercept_methods(spy):
    jax.eval_shape(lambda: T5(cfg).init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, tokens, tokens,
                                        deterministic=False))
  assert seen == [(0.3, False), (0.3, False)]  # one encoder and one decoder MLP, both in training mode
