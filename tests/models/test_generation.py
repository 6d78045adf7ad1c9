"""Sampling (temperature, top-k, top-p) and beam search, for the decoder and T5.

Beam search is compared token for token (all beams) and score for score with transformers'
`generate(num_beams=N, do_sample=False, length_penalty=..., early_stopping=...)` on tiny random
HF models imported into itjax. The EOS logit is raised so that hypotheses end at varied lengths
and the finishing / stopping rules matter. HF semantics matched (transformers 5): 2N candidates per
step, only the best N may finish, score = sum log p / generated_length ** length_penalty
(EOS counted), early_stopping True / False (HF's heuristic) / "never".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from itjax.models import enc_dec_decoding as t5_decoding  # noqa: E402
from itjax.models import hf_decoder as hf_llama  # noqa: E402
from itjax.models import hf_t5  # noqa: E402
from itjax.models.decoder import Decoder, DecoderConfig  # noqa: E402
from itjax.models.decoding import beam_search, filter_logits, greedy_decode, left_pad, sample_decode  # noqa: E402
from itjax.models.t5 import T5  # noqa: E402

torch.set_num_threads(1)

CFG = DecoderConfig(vocab_size=40, emb_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
PROMPTS = [[0, 5, 6, 7, 8, 9], [0, 3], [0, 11, 12, 13]]
EOS_BOOST = 2.5  # added to the EOS row of the HF head


def _random_params(model, *inputs, seed: int = 0):
  """Random params of the right shapes, from eval_shape (nothing is compiled): unit-ish norms, 1/sqrt(fan_in)."""
  shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"])
  rng = np.random.default_rng(seed)
  leaf = lambda s: (rng.standard_normal(s.shape) * (0.2 if len(s.shape) == 1 else s.shape[0] ** -0.5)
                    + (len(s.shape) == 1)).astype(np.float32)
  return jax.tree.map(leaf, shapes)


@pytest.fixture(scope="module")
def decoder():
  model = Decoder(CFG)
  params = _random_params(model, jnp.zeros((1, 4), jnp.int32))
  tokens, mask = left_pad(PROMPTS, multiple=8)
  return model, params, jnp.asarray(tokens), jnp.asarray(mask)


def test_zero_temperature_and_top_k_1_equal_greedy(decoder):
  model, params, tokens, mask = decoder
  greedy = np.asarray(greedy_decode(model, params, tokens, mask, max_new_tokens=6, eos_id=-1))
  key = jax.random.key(3)
  for kw in (dict(temperature=0.0), dict(temperature=1e-4), dict(top_k=1, temperature=5.0)):
    out = sample_decode(model, params, tokens, mask, key, max_new_tokens=6, eos_id=-1, **kw)
    np.testing.assert_array_equal(np.asarray(out), greedy, err_msg=str(kw))


def test_same_key_same_tokens(decoder):
  model, params, tokens, mask = decoder
  run = lambda seed: np.asarray(sample_decode(model, params, tokens, mask, jax.random.key(seed), max_new_tokens=6,
                                              eos_id=-1, temperature=2.0))
  np.testing.assert_array_equal(run(7), run(7))
  assert not np.array_equal(run(7), run(8))


class FixedLogits(nn.Module):
  """A 'decoder' whose next-token distribution never changes: known top-k set and nucleus."""

  cfg: DecoderConfig
  logits: tuple[float, ...]

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, decode: bool = False):
    return jnp.broadcast_to(jnp.asarray(self.logits, jnp.float32), tokens.shape + (len(self.logits),))


# probabilities 0.4, 0.3, 0.2, 0.05, 0.05: the top_p=0.75 nucleus is {0, 1, 2} (mass before token 2 is 0.7).
PROBS = np.array([0.4, 0.3, 0.2, 0.05, 0.05])


@pytest.mark.parametrize("kw, allowed", [(dict(top_p=0.75), {0, 1, 2}), (dict(top_p=0.5), {0, 1}),
                                         (dict(top_k=2), {0, 1}), (dict(top_k=4, top_p=0.3), {0})])
def test_sampled_tokens_lie_in_top_k_and_nucleus(kw, allowed):
  model = FixedLogits(DecoderConfig(vocab_size=5), tuple(np.log(PROBS).tolist()))
  tokens, mask = left_pad([[0, 1]] * 64, multiple=2)
  out = np.asarray(sample_decode(model, {}, tokens, mask, jax.random.key(0), max_new_tokens=16, eos_id=-1, **kw))
  assert set(np.unique(out)) == allowed  # every allowed token shows up, nothing else does
  if kw == dict(top_p=0.75):  # renormalized over the nucleus: 4/9, 3/9, 2/9
    freq = np.bincount(out.ravel(), minlength=5)[:3] / out.size
    np.testing.assert_allclose(freq, PROBS[:3] / 0.9, atol=0.05)


def test_filter_logits_matches_hf_warpers():
  logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
  ref = torch.from_numpy(np.array(logits))
  for temperature, top_k, top_p in ((0.7, 0, 0.9), (1.3, 10, 1.0), (1.0, 8, 0.6)):
    warpers = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(temperature)])
    if top_k:
      warpers.append(transformers.TopKLogitsWarper(top_k))
    if top_p < 1.0:
      warpers.append(transformers.TopPLogitsWarper(top_p))
    theirs = np.isfinite(warpers(None, ref.clone()).numpy())
    ours = np.asarray(filter_logits(logits, temperature, top_k, top_p)) > jnp.finfo(jnp.float32).min
    np.testing.assert_array_equal(ours, theirs)


# ----------------------------------------------------------------------------- beam search vs transformers


def _randomize(model, scale_1d: float = 0.2) -> None:
  """Non-trivial norms and 1/sqrt(fan_in) weights, then a boosted EOS (id 1) logit."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:
        p.copy_(1.0 + scale_1d * noise)
      elif "relative_attention_bias" in name or name == "shared.weight":
        p.copy_(0.5 * noise)
      else:
        p.copy_(noise * p.shape[-1] ** -0.5)
    model.lm_head.weight[1] += EOS_BOOST


@pytest.fixture(scope="module")
def hf_t5_model(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                 num_heads=4, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=False, decoder_start_token_id=0, attn_implementation="eager")
  model = transformers.T5ForConditionalGeneration(config).eval()
  _randomize(model)
  path = tmp_path_factory.mktemp("t5")
  model.save_pretrained(path, safe_serialization=True)
  rng = np.random.default_rng(1)
  enc = rng.integers(2, 64, size=(6, 12)).astype(np.int32)
  mask = np.ones_like(enc)
  mask[1, 8:] = mask[3, 5:] = 0
  enc[mask == 0] = 0
  return path, model, enc, mask


def _hf_beams(model, inputs, mask, *, num_beams, length_penalty, early_stopping, n, prompt_len):
  """HF's finished hypotheses (all beams, best first) as token lists up to EOS, and their scores."""
  with torch.no_grad():
    out = model.generate(input_ids=torch.from_numpy(inputs.astype(np.int64)),
                         attention_mask=torch.from_numpy(mask.astype(np.int64)), do_sample=False, num_beams=num_beams,
                         length_penalty=length_penalty, early_stopping=early_stopping, max_new_tokens=n,
                         eos_token_id=1, pad_token_id=0, num_return_sequences=num_beams, return_dict_in_generate=True,
                         output_scores=True)
  return [_upto_eos(r[prompt_len:]) for r in out.sequences.numpy().tolist()], out.sequences_scores.numpy()


def _upto_eos(row) -> list[int]:
  row = list(row)
  return row[: row.index(1) + 1] if 1 in row else row


# (num_beams, length_penalty, early_stopping, scan_layers): HF's three stopping rules, penalties above and
# below 1, and a scanned layer stack (whose cache has a leading layer axis when beams are reordered).
BEAM_CASES = [(4, 2.0, True, True), pytest.param(3, 0.6, False, False, marks=pytest.mark.slow),
              pytest.param(3, 1.0, "never", False, marks=pytest.mark.slow)]


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping, scan_layers", BEAM_CASES)
def test_t5_beam_search_matches_generate(hf_t5_model, num_beams, length_penalty, early_stopping, scan_layers):
  path, model, enc, mask = hf_t5_model
  cfg, params = hf_t5.load_hf_dir(path, scan_layers=scan_layers)
  n = 10
  theirs, their_scores = _hf_beams(model, enc, mask, num_beams=num_beams, length_penalty=length_penalty,
                                   early_stopping=early_stopping, n=n, prompt_len=1)  # drop the decoder start
  toks, scores = t5_decoding.beam_search(T5(cfg), params, jnp.asarray(enc), jnp.asarray(mask), max_new_tokens=n,
                                         num_beams=num_beams, length_penalty=length_penalty,
                                         early_stopping=early_stopping)
  toks = np.asarray(toks)
  assert [_upto_eos(r) for r in toks.reshape(-1, n).tolist()] == theirs
  np.testing.assert_allclose(np.asarray(scores).ravel(), their_scores, atol=1e-4)
  assert len({len(t) for t in theirs}) > 2  # hypotheses of several lengths, so the rules were exercised
  assert all((r[r.tolist().index(1) + 1:] == 0).all() for r in toks.reshape(-1, n) if 1 in r)  # 0 after EOS


def test_t5_sampling_zero_temperature_is_greedy_and_keyed(hf_t5_model):
  path, model, enc, mask = hf_t5_model
  cfg, params = hf_t5.load_hf_dir(path)
  with torch.no_grad():
    greedy = model.generate(input_ids=torch.from_numpy(enc.astype(np.int64)),
                            attention_mask=torch.from_numpy(mask.astype(np.int64)), do_sample=False, num_beams=1,
                            max_new_tokens=6, min_new_tokens=6, eos_token_id=None, pad_token_id=0).numpy()[:, 1:]
  # Settings are traced: one compilation serves every call.
  sample = lambda seed, **kw: np.asarray(t5_decoding.sample_decode(
      T5(cfg), params, jnp.asarray(enc), jnp.asarray(mask), jax.random.key(seed), max_new_tokens=6, eos_id=-1, **kw))
  np.testing.assert_array_equal(sample(0, temperature=0.0), greedy)
  np.testing.assert_array_equal(sample(0, top_k=1), greedy)
  np.testing.assert_array_equal(sample(1, temperature=1.5, top_p=0.9), sample(1, temperature=1.5, top_p=0.9))


@pytest.mark.slow
def test_decoder_beam_search_matches_generate(tmp_path):
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
  model = transformers.LlamaForCausalLM(config).eval()
  _randomize(model)
  model.save_pretrained(tmp_path, safe_serialization=True)
  cfg, params = hf_llama.load_hf_dir(tmp_path)
  tokens, mask = left_pad([[5, 6, 7, 8, 9], [3, 4], [10, 11, 12, 13, 14, 15, 16], [20]], multiple=8)
  n, k = 8, 3
  theirs, their_scores = _hf_beams(model, tokens, mask, num_beams=k, length_penalty=1.5, early_stopping=False, n=n,
                                   prompt_len=tokens.shape[1])
  toks, scores = beam_search(Decoder(cfg), params, jnp.asarray(tokens), jnp.asarray(mask), max_new_tokens=n, eos_id=1,
                             num_beams=k, length_penalty=1.5, early_stopping=False)
  assert [_upto_eos(r) for r in np.asarray(toks).reshape(-1, n).tolist()] == theirs
  np.testing.assert_allclose(np.asarray(scores).ravel(), their_scores, atol=1e-4)
