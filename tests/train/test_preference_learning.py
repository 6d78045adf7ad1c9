"""Preference objectives learn: through the real train step, DPO (against the frozen initial policy), SimPO and
ORPO raise the chosen-vs-rejected margin and the preference accuracy on held-out pairs, where the better answer
is known (copy the prompt's letter, not another one). The control — the same steps with a zero learning
rate — stays at chance, so the check bites."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from itjax.core.trainable import TrainState
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.families import interface_for
from itjax.train.objectives.preference import Preference, orpo, simpo
from itjax.train.step import train_step

LETTERS = "abcdefgh"
LENGTH = 48
CFG = DecoderConfig(vocab_size=128, emb_dim=32, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64)


def _pairs(held_out: bool):
  """(prompt, chosen, rejected) byte ids: prompt 'x=<c>:', chosen '<c><c><c>', rejected '<d><d><d>' (d != c); the
  held-out pairs are the (c, d) combinations never trained on."""
  out = []
  for i, c in enumerate(LETTERS):
    for j, d in enumerate(LETTERS):
      if c != d and ((i + j) % 3 == 0) == held_out:
        out.append((list(b"x=" + c.encode() + b":"), list((c * 3).encode()) + [1], list((d * 3).encode()) + [1]))
  return out


def _batch(pairs):
  """Packed as the preference converter lays rows out: pair units of (prompt + chosen | prompt + rejected)."""
  per_row = LENGTH // (2 * (len(pairs[0][0]) + len(pairs[0][1]) - 1))
  rows = -(-len(pairs) // per_row)
  f = {k: np.zeros((rows, LENGTH), np.int32) for k in ("decoder_input_tokens", "decoder_target_tokens",
                                                       "decoder_loss_weights", "decoder_segment_ids",
                                                       "decoder_positions", "preference_ids")}
  for n, (prompt, chosen, rejected) in enumerate(pairs):
    r, k = divmod(n, per_row)
    at = k * 2 * (len(prompt) + len(chosen) - 1)
    for side, response in ((1, chosen), (2, rejected)):
      seq = prompt + response
      span = slice(at, at + len(seq) - 1)
      f["decoder_input_tokens"][r, span], f["decoder_target_tokens"][r, span] = seq[:-1], seq[1:]
      f["decoder_loss_weights"][r, span] = [0] * (len(prompt) - 1) + [1] * len(response)
      f["decoder_segment_ids"][r, span] = 2 * k + side
      f["decoder_positions"][r, span] = np.arange(len(seq) - 1)
      f["preference_ids"][r, span] = 2 * k + side
      at += len(seq) - 1
  return {k: jnp.asarray(v) for k, v in f.items()}


def _accuracy_and_margin(objective, params, reference, batch):
  sums = objective.loss_sums(interface_for(CFG), params, batch, {"reference": reference}, None)
  m = objective.metrics(sums, objective.normalizer(sums, batch["decoder_target_tokens"].shape))
  return float(m["accuracy"]), float(m["margin"])


def _train(objective, learning_rate, steps=40):
  params = Decoder(CFG).init(jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  reference = params
  optimizer = optax.adamw(learning_rate)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  train = _batch(_pairs(held_out=False))
  step = jax.jit(lambda s: train_step(s, train, {"reference": reference}, model=CFG, optimizer=optimizer,
                                      schedule=optax.constant_schedule(learning_rate), objective=objective))
  for _ in range(steps):
    state, metrics = step(state)
    assert bool(metrics["finite"])
  held = _batch(_pairs(held_out=True))
  return _accuracy_and_margin(objective, reference, reference, held), _accuracy_and_margin(objective, state.params,
                                                                                          reference, held)


@pytest.mark.parametrize("objective", [Preference(method="dpo", beta=0.1), simpo(), orpo()],
                         ids=["dpo", "simpo", "orpo"])
def test_preference_training_raises_held_out_accuracy_and_margin(objective):
  (acc0, margin0), (acc, margin) = _train(objective, 3e-3)
  assert acc >= 0.9 and acc > acc0 + 0.2, (acc0, acc)
  assert margin > margin0 + 0.05, (margin0, margin)
  (_, _), (acc_off, _) = _train(objective, 0.0, steps=3)  # the control: no learning, no gain
  assert acc_off < 0.9 and abs(acc_off - acc0) < 1e-6
