"""Loss options of the train step: z-loss, and the T5X-style loss normalizing factors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from itjax.core import mesh as partitioning
from itjax.core.trainable import FullParams
from itjax.errors import UserError
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.train.objectives.cross_entropy import (
  CrossEntropy,
  check_loss_normalizing_factor,
  loss_sums,
  normalizer,
  per_sequence_weights,
)
from itjax.train.step import train_step

CFG = DecoderConfig(vocab_size=40, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
ROWS, LENGTH = 4, 12


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
  """Packed rows with segments of different lengths (so per-token and per-sequence means differ)."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((ROWS, LENGTH), np.int32)
  pos = np.zeros((ROWS, LENGTH), np.int32)
  for r in range(ROWS):
    cuts = sorted(rng.choice(np.arange(2, LENGTH - 1), size=2, replace=False))
    bounds = [0, cuts[0], cuts[1], LENGTH - r % 2]  # odd rows end in padding
    for s in range(3):
      seg[r, bounds[s]:bounds[s + 1]] = s + 1
      pos[r, bounds[s]:bounds[s + 1]] = np.arange(bounds[s + 1] - bounds[s])
  targets = np.where(seg > 0, rng.integers(1, CFG.vocab_size, (ROWS, LENGTH)), 0).astype(np.int32)
  inputs = np.where(pos == 0, 0, np.roll(targets, 1, axis=1)).astype(np.int32)
  weights = ((seg > 0) & (pos >= 1)).astype(np.int32)
  return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets, "decoder_loss_weights": weights,
          "decoder_segment_ids": seg, "decoder_positions": pos}


@pytest.fixture(scope="module")
def setup():
  mesh = partitioning.create_mesh((1, 1, 1), jax.devices()[:1])
  model, opt = Decoder(CFG), optax.sgd(0.1)
  state, _ = FullParams(CFG).create_state(opt, mesh, (), jax.random.key(0))
  batch = _batch()
  logits = jax.jit(model.apply)({"params": state.params}, batch["decoder_input_tokens"],
                                batch["decoder_segment_ids"], batch["decoder_positions"])
  return model, opt, state, batch, np.asarray(logits, np.float64)


_RESULTS = {}


def _step(setup, **kw):
  """(metrics, updated params) of one step from the initial state; each setting compiles once."""
  key = tuple(sorted(kw.items()))
  if key not in _RESULTS:
    model, opt, state, batch, _ = setup
    loss_kw = {k: kw.pop(k) for k in list(kw) if k in ("z_loss", "label_smoothing", "loss_normalizing_factor")}
    fn = jax.jit(functools.partial(train_step, model=model, optimizer=opt, schedule=lambda s: 0.1,
                                   objective=CrossEntropy(**loss_kw), **kw))
    new, m = fn(state, batch)
    _RESULTS[key] = jax.device_get(m), jax.device_get(new.params)
  return _RESULTS[key]


def _token_terms(setup):
  """Per-token (nll, log_z, weight) in float64 from the initial params' logits."""
  _, _, _, batch, logits = setup
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = log_z - np.take_along_axis(logits, batch["decoder_target_tokens"][..., None], -1)[..., 0]
  return nll, log_z, batch["decoder_loss_weights"].astype(np.float64)


def _per_sequence_mean(nll, w, seg) -> float:
  means = [np.sum(nll[r][seg[r] == s] * w[r][seg[r] == s]) / np.sum(w[r][seg[r] == s])
           for r in range(ROWS) for s in np.unique(seg[r]) if s and np.sum(w[r][seg[r] == s])]
  return float(np.mean(means))


def test_z_loss_adds_its_weighted_mean_squared_log_z(setup):
  """z_loss is traced here, so both values share one compilation."""
  model, _, state, batch, _ = setup
  sums = jax.jit(lambda p, b, z: loss_sums(model, p, b, z))
  base, with_z = jax.device_get(sums(state.params, batch, 0.0)), jax.device_get(sums(state.params, batch, 1e-2))
  nll, log_z, w = _token_terms(setup)
  expected = 1e-2 * np.sum(log_z ** 2 * w) / np.sum(w)
  assert expected > 1e-3
  np.testing.assert_allclose(base["loss"] / base["weight"], np.sum(nll * w) / np.sum(w), rtol=1e-5)
  np.testing.assert_allclose((with_z["loss"] - base["loss"]) / base["weight"], expected, rtol=1e-4)
  np.testing.assert_allclose(with_z["z_loss"] / with_z["weight"], expected, rtol=1e-5)
  assert base["z_loss"] == 0.0


def test_per_sequence_weights_and_normalizers(setup):
  nll, _, w = _token_terms(setup)
  seg = setup[3]["decoder_segment_ids"]
  weights, sequences = per_sequence_weights(jnp.asarray(w), jnp.asarray(seg))
  assert int(sequences) == sum(1 for r in range(ROWS) for s in np.unique(seg[r]) if s and w[r][seg[r] == s].sum())
  np.testing.assert_allclose(np.sum(nll * np.asarray(weights)) / float(sequences), _per_sequence_mean(nll, w, seg),
                             rtol=1e-6)
  sums = {"weight": jnp.float32(37.0), "sequences": jnp.float32(5.0)}
  assert float(normalizer(sums, "num_real_target_tokens", (ROWS, LENGTH))) == 37.0
  assert float(normalizer(sums, "num_total_target_tokens", (ROWS, LENGTH))) == ROWS * LENGTH
  assert float(normalizer(sums, "average_per_sequence", (ROWS, LENGTH))) == 5.0
  assert float(normalizer(sums, 1234.0, (ROWS, LENGTH))) == 1234.0


def test_train_step_average_per_sequence_with_accumulation(setup):
  """Every packed sequence counts equally, and microbatches still add up to the full batch."""
  m, _ = _step(setup, loss_normalizing_factor="AVERAGE_PER_SEQUENCE", num_microbatches=2)
  nll, _, w = _token_terms(setup)
  expected = _per_sequence_mean(nll, w, setup[3]["decoder_segment_ids"])
  np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
  assert abs(expected - np.sum(nll * w) / np.sum(w)) > 1e-3  # the segments have different lengths


def test_train_step_fixed_factor(setup):
  nll, _, w = _token_terms(setup)
  m, _ = _step(setup, loss_normalizing_factor=1234.0)
  np.testing.assert_allclose(m["loss"], np.sum(nll * w) / 1234.0, rtol=1e-5)
  assert bool(m["finite"])


@pytest.mark.parametrize("bad", ["per_sequence", 0, -1.0, True, None])
def test_unknown_factor_is_a_user_error(bad):
  with pytest.raises(UserError, match="loss_normalizing_factor"):
    check_loss_normalizing_factor(bad)


def test_metrics_flag_non_finite_updates(setup):
  """`finite` is what the trainer checks before every checkpoint."""
  model, _, state, batch, _ = setup
  fn = jax.jit(functools.partial(train_step, model=model, optimizer=optax.sgd(np.inf), schedule=lambda s: np.inf))
  assert not bool(fn(state, batch)[1]["finite"])
