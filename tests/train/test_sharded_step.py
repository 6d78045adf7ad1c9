"""The jitted train step: sharding and gradient accumulation do not change the math."""

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from itjax.core import mesh as partitioning
from itjax.core.trainable import FullParams
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.train.step import train_step

CFG = DecoderConfig(vocab_size=40, emb_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
BATCH, LENGTH = 8, 16
# Parameters after 3 AdamW steps of lr 1e-2: a sharding bug moves them by ~1e-2. Adam divides by sqrt(v), so a
# weight whose gradient is ~0 can move by ~1e-5 between two summation orders of the same gradient.
PARAM_ATOL = 1e-4


def _batches(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    targets = rng.integers(1, CFG.vocab_size, (BATCH, LENGTH)).astype(np.int32)
    seg = np.ones((BATCH, LENGTH), np.int32)
    seg[:, LENGTH // 2:] = 2  # two packed examples per row
    seg[:, -2:] = 0           # and padding
    targets[seg == 0] = 0
    pos = np.concatenate([np.arange(LENGTH // 2), np.arange(LENGTH // 2)])[None].repeat(BATCH, 0).astype(np.int32)
    inputs = np.where(pos == 0, 0, np.roll(targets, 1, axis=1)).astype(np.int32)
    weights = (seg > 0).astype(np.int32) * (pos >= 3)
    out.append({"decoder_input_tokens": inputs, "decoder_target_tokens": targets, "decoder_loss_weights": weights,
                "decoder_segment_ids": seg, "decoder_positions": pos.astype(np.int32)})
  return out


def _run(mesh_shape, devices, steps=3, microbatches=1):
  mesh = partitioning.create_mesh(mesh_shape, devices)
  rules = partitioning.DEFAULT_RULES
  model = Decoder(CFG)
  opt = optax.adamw(1e-2)
  state, shardings = FullParams(CFG).create_state(opt, mesh, rules, jax.random.key(0))
  bs = partitioning.batch_sharding(mesh, rules)
  step = jax.jit(functools.partial(train_step, model=model, optimizer=opt, schedule=lambda s: 1e-2,
                                   num_microbatches=microbatches),
                 in_shardings=(shardings, bs, {}), out_shardings=(shardings, None), donate_argnums=(0,))
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for b in _batches(steps):
      state, m = step(state, {k: jax.device_put(v, bs) for k, v in b.items()}, {})
      losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def single():
  return _run((1, 1, 1), jax.devices()[:1])


# (8, 1, 1): data; (1, 4, 2): fsdp x tensor. Data x fsdp meshes run with the slow tests.
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), pytest.param((2, 4, 1), marks=pytest.mark.slow),
                                        pytest.param((2, 2, 2), marks=pytest.mark.slow), (1, 4, 2)])
def test_sharded_matches_single_device(single, mesh_shape):
  assert len(jax.devices()) == 8
  losses, params, state = _run(mesh_shape, jax.devices())
  np.testing.assert_allclose(losses, single[0], rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=PARAM_ATOL), params, single[1])
  if mesh_shape[1] > 1:  # fsdp really shards the parameters
    emb = state.params["embedding"]
    assert emb.sharding.shard_shape(emb.shape)[1] == CFG.emb_dim // mesh_shape[1]


def test_gradient_accumulation_equals_big_batch(single):
  losses, params, _ = _run((1, 1, 1), jax.devices()[:1], microbatches=4)
  np.testing.assert_allclose(losses, single[0], rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=PARAM_ATOL), params, single[1])


def test_loss_decreases_when_overfitting_one_batch():
  mesh = partitioning.create_mesh((1, 1, 1), jax.devices()[:1])
  model, opt = Decoder(CFG), optax.adam(3e-3)
  state, sh = FullParams(CFG).create_state(opt, mesh, (), jax.random.key(0))
  step = jax.jit(functools.partial(train_step, model=model, optimizer=opt, schedule=lambda s: 3e-3))
  b = _batches(1)[0]
  first = None
  for _ in range(30):
    state, m = step(state, b)
    first = first if first is not None else float(m["loss"])
  assert float(m["loss"]) < 0.5 * first
