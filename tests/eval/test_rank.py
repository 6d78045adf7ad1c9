"""Rank classification picks the option a model prefers; scores equal a manual log-likelihood."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from itjax.data.vocab import REGISTERED
from itjax.eval.rank import rank_classify
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.interface import DecoderOnly
from itjax.models.scoring import score_continuations

VOCAB = REGISTERED


class PrefersBytes(nn.Module):
  """A 'model' whose next-token distribution is fixed: it likes some tokens, and EOS."""

  liked: tuple[int, ...]
  vocab_size: int = 259

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None):
    bias = jnp.zeros(self.vocab_size).at[jnp.array(self.liked)].set(5.0)
    return jnp.broadcast_to(bias, tokens.shape + (self.vocab_size,))


def _row(prompt, options, target):
  return {"input_ids": list(VOCAB.encode(prompt)), "options": options, "target": target}


def test_rank_picks_the_option_the_model_prefers():
  liked = tuple(VOCAB.encode("yes")) + (VOCAB.eos_id,)
  model = PrefersBytes(liked)
  rows = [_row("Is it? ", ["no", "yes"], "yes"), _row("Really? ", ["yes", "no", "maybe"], "yes"),
          _row("No options", [], "x")]
  out = rank_classify(DecoderOnly(model), {}, rows, VOCAB, batch_size=4)
  assert out[0]["option"] == "yes" and out[1]["option"] == "yes" and out[2] is None
  assert len(out[1]["loglik"]) == 3


def test_length_normalization_differs_from_sum():
  # Every token except EOS is equally likely: the sum favours the shortest option, per-byte the longest.
  model = PrefersBytes((VOCAB.eos_id,))
  out = rank_classify(DecoderOnly(model), {}, [_row("Q ", ["ab", "abcdefgh"], "ab")], VOCAB)
  assert out[0]["option"] == "ab" and out[0]["option_norm"] == "abcdefgh"


def test_scores_equal_manual_log_likelihood():
  cfg = DecoderConfig(vocab_size=259, emb_dim=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
  model = Decoder(cfg)
  params = model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
  pairs = [([10, 11, 12], [20, 21]), ([30], [40, 41, 42, 1])]
  scores, _ = score_continuations(model, params, pairs, batch_size=3)
  for (p, c), s in zip(pairs, scores, strict=True):
    seq = [0] + p + c
    logp = jax.nn.log_softmax(model.apply({"params": params}, jnp.array([seq[:-1]]))[0])
    manual = sum(float(logp[len(p) + j, t]) for j, t in enumerate(c))
    np.testing.assert_allclose(s, manual, rtol=1e-5)
