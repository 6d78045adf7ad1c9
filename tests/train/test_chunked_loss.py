"""The chunked cross-entropy (sft.loss_chunk): the same loss (1e-6 relative) and gradients (1e-6) as the full
one (fp32) for both families and every loss option, without a [batch, length, vocab] array anywhere in the step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_shapes import shapes

from itjax.errors import UserError
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.families import interface_for
from itjax.models.t5 import T5, T5Config
from itjax.train.objectives.cross_entropy import CrossEntropy, loss_sums, normalizer

ROWS, LENGTH, VOCAB = 3, 11, 97
DECODER = DecoderConfig(vocab_size=VOCAB, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
T5_TIED = T5Config(vocab_size=VOCAB, emb_dim=16, mlp_dim=32, num_heads=2, head_dim=8, num_encoder_layers=1,
                   num_decoder_layers=1)


def _batch(seed: int, enc_dec: bool) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  seg = np.ones((ROWS, LENGTH), np.int32)
  seg[:, 6:] = 2
  seg[1, 9:] = 0  # padding
  pos = np.concatenate([np.arange(6), np.arange(LENGTH - 6)])[None].repeat(ROWS, 0).astype(np.int32)
  targets = np.where(seg > 0, rng.integers(1, VOCAB, (ROWS, LENGTH)), 0).astype(np.int32)
  batch = {"decoder_input_tokens": np.where(pos == 0, 0, np.roll(targets, 1, 1)).astype(np.int32),
           "decoder_target_tokens": targets, "decoder_loss_weights": (seg > 0).astype(np.int32),
           "decoder_segment_ids": seg, "decoder_positions": pos}
  if enc_dec:
    batch.update(encoder_input_tokens=rng.integers(1, VOCAB, (ROWS, 7)).astype(np.int32),
                 encoder_segment_ids=np.array([[1] * 4 + [2] * 3] * ROWS, np.int32),
                 encoder_positions=np.array([list(range(4)) + list(range(3))] * ROWS, np.int32))
  return {k: jnp.asarray(v) for k, v in batch.items()}


def _model(family: str):
  if family == "decoder":
    model = Decoder(DECODER)
    params = model.init(jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))["params"]
  else:
    model = T5(dataclasses.replace(T5_TIED, tie_embeddings=family == "t5 tied"))
    params = model.init(jax.random.key(0), jnp.zeros((1, 7), jnp.int32), jnp.zeros((1, LENGTH), jnp.int32))["params"]
  return model, params


OPTIONS = [dict(), dict(z_loss=1e-3), dict(label_smoothing=0.1),
           dict(loss_normalizing_factor="average_per_sequence", z_loss=1e-4)]


@pytest.mark.parametrize("family", ["decoder", "t5 tied", "t5 untied"])
@pytest.mark.parametrize("chunk", [pytest.param(1, marks=pytest.mark.slow), 4, LENGTH, 64])
def test_chunked_loss_and_gradients_equal_the_full_ones(family, chunk):
  model, params = _model(family)
  batch = _batch(1, family != "decoder")
  for options in OPTIONS if chunk == 4 else OPTIONS[:1]:  # every option at one chunk size, the plain loss at all
    def total(p, c, options=options):  # the training loss: the summed loss over its normalizer
      sums = loss_sums(model, p, batch, dropout_rng=None, chunk=c, **options)
      factor = options.get("loss_normalizing_factor", "num_real_target_tokens")
      return sums["loss"] / normalizer(sums, factor, (ROWS, LENGTH))

    full, full_grad = jax.value_and_grad(total)(params, None)
    got, got_grad = jax.value_and_grad(total)(params, chunk)
    np.testing.assert_allclose(got, full, rtol=1e-6, atol=0, err_msg=str(options))  # a few ulps at ~5
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(full_grad), strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=str(options))
  sums = {c: loss_sums(model, params, batch, chunk=c) for c in (None, chunk)}
  for k in ("weight", "correct"):
    assert float(sums[None][k]) == float(sums[chunk][k])


@pytest.mark.parametrize("family", ["decoder", "t5 untied"])
def test_the_step_never_holds_the_batch_logits(family):
  """Forward and backward: no [rows, length, vocab] array with a chunk; the full loss has one (the check bites)."""
  model, params = _model(family)
  batch = _batch(2, family != "decoder")
  objective = CrossEntropy(z_loss=1e-4, loss_chunk=4)
  iface = interface_for(model)

  def grads(obj):
    return jax.make_jaxpr(jax.grad(lambda p: obj.loss_sums(iface, p, batch, {}, None)["loss"]))(params).jaxpr

  assert (ROWS, LENGTH, VOCAB) not in shapes(grads(objective))
  assert (ROWS, 4, VOCAB) in shapes(grads(objective))
  assert (ROWS, LENGTH, VOCAB) in shapes(grads(CrossEntropy(z_loss=1e-4)))


def test_a_bad_chunk_is_a_user_error():
  with pytest.raises(UserError, match=r"sft.loss_chunk=0 must be an integer >= 1"):
    CrossEntropy(loss_chunk=0)
