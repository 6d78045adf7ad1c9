"""The example gin files' learning-rate schedule follows TRAIN_STEPS: warmup as a fraction, decay over the rest."""

import gin
import numpy as np
import optax
import pytest

from itjax import config
from itjax.errors import UserError
from itjax.train.optim import learning_rate_schedule

EXAMPLE = "examples/tiny_heldout.gin"


def _schedule(*bindings):
  config.parse([EXAMPLE], ["MODEL_DIR='/tmp/unused'", *bindings])
  return learning_rate_schedule()


def _reference(lr, warmup, decay, end_factor=0.1):
  """The schedule the example used to spell out as literals (warmup_steps = 40, decay_steps = 360)."""
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                               optax.cosine_decay_schedule(lr, decay, alpha=end_factor)], [warmup])


def _values(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_the_demo_schedule_is_unchanged_at_400_steps():
  steps = range(0, 401)
  np.testing.assert_allclose(_values(_schedule(), steps), _values(_reference(2e-3, 40, 360), steps), rtol=1e-6)


def test_the_schedule_follows_an_overridden_train_steps():
  steps = range(0, 1001, 5)
  got = _values(_schedule("TRAIN_STEPS=1000"), steps)
  np.testing.assert_allclose(got, _values(_reference(2e-3, 100, 900), steps), rtol=1e-6)
  assert got[steps.index(100)] == pytest.approx(2e-3) and got[-1] == pytest.approx(2e-4)


def test_explicit_steps_still_win_and_mistakes_are_user_errors():
  steps = range(0, 401, 10)
  got = _schedule("learning_rate_schedule.warmup_fraction=None", "learning_rate_schedule.warmup_steps=10",
                  "learning_rate_schedule.decay_steps=100")
  np.testing.assert_allclose(_values(got, steps), _values(_reference(2e-3, 10, 100), steps), rtol=1e-6)
  with pytest.raises(UserError, match="warmup_steps or warmup_fraction, not both"):
    _schedule("learning_rate_schedule.warmup_steps=10")
  with pytest.raises(UserError, match="warmup_fraction=1.5"):
    _schedule("learning_rate_schedule.warmup_fraction=1.5")
  gin.clear_config()
  with pytest.raises(UserError, match="needs 0 <= fraction < 1 and total_steps"):
    learning_rate_schedule(warmup_fraction=0.1)  # no gin: no total_steps
