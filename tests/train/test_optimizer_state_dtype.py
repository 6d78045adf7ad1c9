"""make_optimizer.state_dtype: the optimizer state in bfloat16 (half its memory) still trains like float32."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from itjax.errors import UserError
from itjax.train.optim import make_optimizer, with_state_dtype


def _problem():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(256, 32)), jnp.float32)
  w_true = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
  y = x @ w_true
  params = {"w": jnp.zeros((32, 8)), "b": jnp.zeros((8,))}
  return params, lambda p: jnp.mean(jnp.square(x @ p["w"] + p["b"] - y))


def _train(tx, steps=300):
  params, loss = _problem()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  first = None
  for _ in range(steps):
    params, state, value = step(params, state)
    first = value if first is None else first
  return float(first), float(loss(params)), state


def _float_bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating))


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_bfloat16_state_halves_its_memory_and_still_learns(name):
  def make(dtype):
    with gin.unlock_config():
      gin.bind_parameter("learning_rate_schedule.base_learning_rate", 0.05)
    try:
      return make_optimizer(name=name, state_dtype=dtype, clip_grad_norm=None)[0]
    finally:
      gin.clear_config()

  first32, last32, state32 = _train(make("float32"))
  first16, last16, state16 = _train(make("bfloat16"))
  floats16 = [x for x in jax.tree.leaves(state16) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats16 and all(x.dtype == jnp.bfloat16 for x in floats16)
  assert _float_bytes(state16) * 2 == _float_bytes(state32)
  assert last32 < 0.05 * first32  # the float32 reference learns the problem
  assert last16 < 0.05 * first16  # and so does bfloat16 state
  assert last16 < 3 * last32 + 1e-3, (last16, last32)  # about as well


def test_the_wrapper_keeps_integer_state():
  tx = with_state_dtype(optax.adam(1e-2), jnp.bfloat16)
  counts = [x for x in jax.tree.leaves(tx.init({"w": jnp.zeros(3)})) if jnp.issubdtype(x.dtype, jnp.integer)]
  assert counts and all(x.dtype == jnp.int32 for x in counts)


def test_an_unknown_state_dtype_is_a_user_error():
  with pytest.raises(UserError, match=r"make_optimizer.state_dtype='float16': expected float32 or bfloat16"):
    make_optimizer(state_dtype="float16")
