"""Remat policies by name: every policy gives the no-remat gradients; saving less means less temporary memory
in the compiled backward; the offload policies really move activations to host memory."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itjax.errors import UserError
from itjax.models import remat
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.t5 import T5Config

CFG = DecoderConfig(vocab_size=64, emb_dim=64, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=256,
                    scan_layers=True)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 64, (4, 128)))


def _grad_fn(policy):
  model = Decoder(dataclasses.replace(CFG, remat_policy=policy))
  return jax.jit(jax.grad(lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, TOKENS))[..., 5])))


@pytest.fixture(scope="module")
def params():
  return nn.unbox(Decoder(CFG).init(jax.random.key(0), TOKENS)["params"])


@pytest.fixture(scope="module")
def no_remat_grads(params):
  return _grad_fn("none")(params)


# make test: one policy of each kind (JAX's own, itjax's named saves, host offload); the rest with -m slow.
@pytest.mark.parametrize("policy", [p if p in ("full", "save_qkv_attention", "offload_qkv_attention")
                                    else pytest.param(p, marks=pytest.mark.slow) for p in remat.NAMES[1:]])
def test_every_policy_gives_the_same_gradients(params, no_remat_grads, policy):
  got = _grad_fn(policy)(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(no_remat_grads), strict=True):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=policy)


def test_saving_less_needs_less_temporary_memory(params):
  def temp(policy):
    return _grad_fn(policy).lower(params).compile().memory_analysis().temp_size_in_bytes

  none, qkv, full = temp("none"), temp("save_qkv"), temp("full")
  assert full < qkv < none, (full, qkv, none)


def test_offload_policies_place_activations_in_host_memory(params):
  """The traced backward moves the named activations to host memory (the CPU backend then ignores memory kinds,
  so the check is on the program JAX hands to XLA, as a TPU or GPU would compile it)."""
  def host_puts(policy):
    return str(jax.make_jaxpr(_grad_fn(policy))(params)).count("MemorySpace.Host")

  assert host_puts("offload_qkv_attention") > 0
  assert host_puts("offload_dots") > 0
  assert host_puts("save_qkv_attention") == host_puts("dots_with_no_batch_dims") == 0


def test_unknown_policy_names_the_gin_parameter():
  with pytest.raises(UserError, match=r"T5Config.remat_policy='minimal'"):
    T5Config(remat_policy="minimal")
