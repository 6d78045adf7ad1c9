"""KV-cache decoding agrees with the full forward pass, with and without left padding."""

import jax
import jax.numpy as jnp
import numpy as np

from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.decoding import greedy_decode, left_pad

CFG = DecoderConfig(vocab_size=40, emb_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)


def _params(cfg=CFG):
  return Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]


def _reference_greedy(model, params, prompt, n):
  """Greedy decoding by recomputing the full forward pass each step (no cache, no padding)."""
  toks = list(prompt)
  for _ in range(n):
    logits = model.apply({"params": params}, jnp.array([toks]))
    toks.append(int(jnp.argmax(logits[0, -1])))
  return toks[len(prompt):]


def test_greedy_decode_matches_uncached_reference_for_ragged_batch():
  model, params = Decoder(CFG), _params()
  prompts = [[0, 5, 6, 7, 8, 9], [0, 3], [0, 11, 12, 13]]
  tokens, mask = left_pad(prompts, multiple=8)
  out = np.asarray(greedy_decode(model, params, tokens, mask, max_new_tokens=5, eos_id=-1))
  for row, p in zip(out, prompts, strict=True):
    assert row.tolist() == _reference_greedy(model, params, p, 5)


def test_greedy_decode_stops_rows_at_eos():
  model, params = Decoder(CFG), _params()
  prompt = [0, 5, 6]
  ref = _reference_greedy(model, params, prompt, 6)
  eos = ref[2]  # pretend the third generated token is EOS
  tokens, mask = left_pad([prompt], multiple=4)
  out = np.asarray(greedy_decode(model, params, tokens, mask, max_new_tokens=6, eos_id=eos))[0].tolist()
  first = ref.index(eos)
  assert out[: first + 1] == ref[: first + 1] and all(t == 0 for t in out[first + 1:])


def test_scan_and_remat_do_not_change_logits():
  tokens = jnp.array([[0, 4, 9, 2, 7, 1]])
  base = Decoder(CFG)
  params = _params()
  ref = base.apply({"params": params}, tokens)
  remat = Decoder(DecoderConfig(**{**CFG.__dict__, "remat_policy": "full"}))
  np.testing.assert_allclose(remat.apply({"params": params}, tokens), ref, atol=1e-6)
