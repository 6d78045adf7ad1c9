"""Whole models with each fused attention kernel against the XLA reference: logits and the gradients of a
packed-batch loss (the train step's update direction) within fp32 tolerance, for the Llama-family decoder
(grouped-query heads, scanned and remat'ed layers) and T5 (relative-position bias in the blockwise kernel)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_shapes import shapes

from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.t5 import T5, T5Config

SEGMENTS = np.array([[1] * 30 + [2] * 20 + [3] * 14, [1] * 50 + [0] * 14])  # packed rows; the second padded


def _positions(seg):
  pos = np.zeros_like(seg)
  for r in range(seg.shape[0]):
    for i in range(1, seg.shape[1]):
      pos[r, i] = pos[r, i - 1] + 1 if seg[r, i] == seg[r, i - 1] else 0
  return pos


def _loss_fn(apply, weights):
  def loss(params):
    logits = apply(params)
    return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * weights) / jnp.sum(weights)
  return loss


def _compare(apply_for, params, weights, tol):
  """Logits and parameter gradients of every fused implementation against xla."""
  want_logits = apply_for("xla")(params)
  want_grads = jax.grad(_loss_fn(apply_for("xla"), weights))(params)
  mask = np.asarray(weights)[..., None] > 0
  results = {}
  for impl in apply_for.impls:
    logits = apply_for(impl)(params)
    np.testing.assert_allclose(np.where(mask, logits, 0), np.where(mask, want_logits, 0), atol=tol, rtol=tol)
    grads = jax.grad(_loss_fn(apply_for(impl), weights))(params)
    flat_got, flat_want = jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads)
    for (path, g), w in zip(flat_got, flat_want, strict=True):
      np.testing.assert_allclose(g, w, atol=tol, rtol=tol, err_msg=f"{impl} {jax.tree_util.keystr(path)}")
    results[impl] = grads
  return results


class _Apply:
  def __init__(self, make, impls):
    self.make, self.impls = make, impls

  def __call__(self, impl):
    return self.make(impl)


@pytest.mark.parametrize("scan,remat,impls", [
    (False, "none", ("blockwise",)), pytest.param(True, "full", ("blockwise",), marks=pytest.mark.slow),
    pytest.param(False, "none", ("tpu_splash", "gpu_pallas"), marks=pytest.mark.slow),  # interpreted Pallas: ~30 s
])
def test_decoder_fused_attention_matches_reference(scan, remat, impls):
  cfg = DecoderConfig(vocab_size=64, emb_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                      scan_layers=scan, remat_policy=remat)
  tokens = jnp.asarray(np.random.default_rng(0).integers(2, 64, SEGMENTS.shape))
  seg, pos = jnp.asarray(SEGMENTS), jnp.asarray(_positions(SEGMENTS))
  params = nn.unbox(Decoder(cfg).init(jax.random.key(0), tokens, seg, pos)["params"])

  def make(impl):
    model = Decoder(dataclasses.replace(cfg, attention_impl=impl))
    return lambda p: model.apply({"params": p}, tokens, seg, pos)

  _compare(_Apply(make, impls), params, jnp.asarray(SEGMENTS != 0, jnp.float32), 2e-5)


@pytest.mark.slow
def test_t5_blockwise_attention_matches_reference_with_bias_gradients():
  cfg = T5Config(vocab_size=64, emb_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_heads=4, head_dim=8,
                 mlp_dim=64)
  rng = np.random.default_rng(1)
  enc_seg = SEGMENTS
  dec_seg = np.array([[1] * 10 + [2] * 12 + [3] * 6 + [0] * 4, [1] * 20 + [0] * 12])
  enc, dec = (jnp.asarray(rng.integers(2, 64, s.shape)) for s in (enc_seg, dec_seg))
  args = (enc, dec, jnp.asarray(enc_seg), jnp.asarray(dec_seg), jnp.asarray(_positions(enc_seg)),
          jnp.asarray(_positions(dec_seg)))
  params = nn.unbox(T5(cfg).init(jax.random.key(0), *args)["params"])

  def make(impl):
    model = T5(dataclasses.replace(cfg, attention_impl=impl))
    return lambda p: model.apply({"params": p}, *args)

  grads = _compare(_Apply(make, ("blockwise",)), params, jnp.asarray(dec_seg != 0, jnp.float32), 2e-5)
  for stack in ("encoder", "decoder"):  # the bias tables are learned through the kernel's VJP
    assert float(jnp.abs(grads["blockwise"][stack]["relpos_bias"]["rel_embedding"]).max()) > 1e-4


@pytest.mark.parametrize("family", ["decoder", "t5"])
def test_blockwise_steps_never_hold_length_by_length_arrays(family):
  """Forward and backward of a 1,024-token model: blockwise has no [..., L, L] array (scores, mask or bias)
  anywhere; the reference has them (the check bites)."""
  length = 1024
  tokens = jnp.ones((1, length), jnp.int32)
  if family == "decoder":
    cfg = DecoderConfig(vocab_size=16, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=16)
    make = lambda c: (Decoder(c), (tokens,))  # noqa: E731
  else:
    cfg = T5Config(vocab_size=16, emb_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_heads=2, head_dim=8,
                   mlp_dim=16)
    make = lambda c: (T5(c), (tokens, tokens))  # noqa: E731

  def step_shapes(impl):
    model, args = make(dataclasses.replace(cfg, attention_impl=impl))
    params = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
    grad = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, *args)[..., 0]))
    return {s[-2:] for s in shapes(jax.make_jaxpr(grad)(nn.unbox(params)).jaxpr) if len(s) >= 2}

  assert (length, length) not in step_shapes("blockwise")
  assert (length, length) in step_shapes("xla")


@pytest.mark.slow  # ~30 s; tpu_fits.py compiles the same path for Flan-T5-XXL
def test_t5_dropout_keeps_the_fused_path_only_without_attention_dropout():
  """Training with dropout: HF's attention-probability dropout needs the dense scores; attention_dropout_rate=0.0
  keeps the blockwise kernel (residual and MLP dropout still act: the loss differs from no dropout at all)."""
  length = 1024  # two kernel tiles (512) per side: a [..., L, L] array is the dense path's
  tokens = jnp.ones((1, length), jnp.int32)
  cfg = T5Config(vocab_size=16, emb_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_heads=2, head_dim=8,
                 mlp_dim=16, attention_impl="blockwise", dropout_rate=0.3)

  def run(c):
    model = T5(c)
    params = nn.unbox(model.init(jax.random.key(0), tokens, tokens)["params"])
    f = lambda p: jnp.sum(model.apply({"params": p}, tokens, tokens, deterministic=False,  # noqa: E731
                                      rngs={"dropout": jax.random.key(1)})[..., 0])
    sizes = {s[-2:] for s in shapes(jax.make_jaxpr(jax.grad(f))(params).jaxpr) if len(s) >= 2}
    return (length, length) in sizes, float(f(params))

  dense, with_attention_dropout = run(cfg)
  fused, without = run(dataclasses.replace(cfg, attention_dropout_rate=0.0))
  _, no_dropout = run(dataclasses.replace(cfg, dropout_rate=0.0))
  assert dense and not fused
  assert len({with_attention_dropout, without, no_dropout}) == 3
  with pytest.raises(Exception, match=r"T5Config.attention_dropout_rate=1.5"):
    dataclasses.replace(cfg, attention_dropout_rate=1.5)
