"""T5 encoder-decoder: HF interchange (import/export match torch logits), packing, KV-cache greedy decoding.

Tiny T5 v1.1 (gated-gelu) and original T5 (relu, tied, scaled) models are built in the test with random
weights (no downloads), saved as safetensors and compared in fp32 against transformers' eager attention.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from itjax.errors import UserError  # noqa: E402
from itjax.models import hf_t5  # noqa: E402
from itjax.models.enc_dec_decoding import greedy_decode  # noqa: E402
from itjax.models.t5 import T5, T5Config, relative_position_bucket  # noqa: E402

torch.set_num_threads(1)

TOL = 1e-4
VOCAB = 96
TINY = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            dropout_rate=0.0, decoder_start_token_id=0)
HF_CASES = {
    # Untied head (Flan-T5 layout): transformers 5 builds every T5 tied, so the head is replaced below.
    "v1_1_untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # What transformers 5 makes of tie_word_embeddings=False: a tied head without output scaling.
    "v1_1_tied_unscaled": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "original": dict(feed_forward_proj="relu", relative_attention_num_buckets=8, relative_attention_max_distance=20,
                     layer_norm_epsilon=1e-5),
}
_rng = np.random.default_rng(0)
# Long enough to cross the logarithmic bucket boundaries (distances 16 and 32).
ENC = _rng.integers(2, VOCAB, size=(2, 40)).astype(np.int32)
DEC = _rng.integers(2, VOCAB, size=(2, 20)).astype(np.int32)
DEC[:, 0] = 0  # decoder start token
ENC_MASK = np.ones_like(ENC)
ENC_MASK[1, 27:] = 0
DEC_MASK = np.ones_like(DEC)
DEC_MASK[1, 15:] = 0


def _randomize_torch(model) -> None:
  """Replaces HF's init (unit norms, std-1 head) with weights that make every mapping matter."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name:
        p.copy_(1.0 + 0.2 * noise)
      elif "relative_attention_bias" in name or name == "shared.weight":
        p.copy_(0.5 * noise)
      elif name.endswith(".q.weight"):  # T5 folds 1/sqrt(d_kv) into the query
        p.copy_(noise * (p.shape[-1] * model.config.d_kv) ** -0.5)
      else:
        p.copy_(noise * p.shape[-1] ** -0.5)


def _torch_logits(model, enc, dec, enc_mask=None, dec_mask=None) -> np.ndarray:
  as_t = lambda x: None if x is None else torch.from_numpy(np.asarray(x, np.int64))
  with torch.no_grad():
    out = model(input_ids=as_t(enc), attention_mask=as_t(enc_mask), decoder_input_ids=as_t(dec),
                decoder_attention_mask=as_t(dec_mask))
  return out.logits.float().numpy()


@functools.cache
def _jitted_apply(cfg: T5Config):
  return jax.jit(T5(cfg).apply)


def _itjax_logits(cfg: T5Config, params, enc, dec, **kw) -> np.ndarray:
  kw = {k: jnp.asarray(v) for k, v in kw.items()}
  with jax.default_matmul_precision("highest"):
    return np.asarray(_jitted_apply(cfg)({"params": params}, jnp.asarray(enc), jnp.asarray(dec), **kw))


def _random_itjax(cfg: T5Config, seed: int = 0):
  """Random params of the right shapes (from eval_shape, so nothing is compiled); norm scales are not 1."""
  shapes = jax.eval_shape(lambda: T5(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32),
                                                jnp.zeros((1, 3), jnp.int32)))["params"]
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    noise = rng.standard_normal(s.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return 1.0 + 0.2 * noise
    if "embedding" in name:
      return 0.5 * noise
    return noise * (cfg.emb_dim * (cfg.head_dim if "q_kernel" in name else 1)) ** -0.5

  return jax.tree_util.tree_map_with_path(leaf, nn.meta.unbox(shapes))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """case name -> (saved directory, eager torch model)."""
  out = {}
  for name, extra in HF_CASES.items():
    torch.manual_seed(0)
    config = transformers.T5Config(**{**TINY, **extra}, attn_implementation="eager")
    model = transformers.T5ForConditionalGeneration(config).eval()
    if name == "v1_1_untied":
      model.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, TINY["d_model"]))
    _randomize_torch(model)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path, safe_serialization=True)
    out[name] = (path, model)
  return out


def test_relative_position_bucket_matches_hf():
  rel = np.arange(-300, 301)[None, :] - np.arange(0, 3)[:, None]
  for bidirectional in (True, False):
    for num_buckets, max_distance in ((32, 128), (8, 20), (64, 256)):
      ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
          torch.from_numpy(rel), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
      ours = relative_position_bucket(jnp.asarray(rel), bidirectional, num_buckets, max_distance)
      np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_import_matches_torch(hf_dirs, case):
  path, model = hf_dirs[case]
  cfg, params = hf_t5.load_hf_dir(path)
  ones = np.ones_like(ENC), np.ones_like(DEC)
  ours = _itjax_logits(cfg, params, ENC, DEC, encoder_segment_ids=ones[0], decoder_segment_ids=ones[1])
  diff = np.abs(ours - _torch_logits(model, ENC, DEC)).max()
  assert diff < TOL, f"{case}: max |logit diff| {diff}"
  # Padded encoder and decoder inputs: compare the real (unpadded) decoder positions.
  ours = _itjax_logits(cfg, params, ENC, DEC, encoder_segment_ids=ENC_MASK, decoder_segment_ids=DEC_MASK)
  theirs = _torch_logits(model, ENC, DEC, ENC_MASK, DEC_MASK)
  valid = DEC_MASK.astype(bool)
  diff = np.abs(ours[valid] - theirs[valid]).max()
  assert diff < TOL, f"{case} padded: max |logit diff| {diff}"


def test_import_config_fields(hf_dirs):
  cfg, params = hf_t5.load_hf_dir(hf_dirs["v1_1_untied"][0])
  assert (cfg.mlp_activation, cfg.gated_mlp, cfg.tie_embeddings, cfg.scales_decoder_outputs) == ("gelu", True, False,
                                                                                                False)
  assert params["lm_head"].shape == (32, VOCAB) and "wi_1" in params["encoder"]["layers_0"]["mlp"]
  cfg, params = hf_t5.load_hf_dir(hf_dirs["v1_1_tied_unscaled"][0])
  assert cfg.tie_embeddings and not cfg.scales_decoder_outputs and "lm_head" not in params
  cfg, params = hf_t5.load_hf_dir(hf_dirs["original"][0])
  assert (cfg.mlp_activation, cfg.gated_mlp, cfg.tie_embeddings, cfg.scales_decoder_outputs) == ("relu", False, True,
                                                                                                True)
  assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, cfg.norm_eps) == (8, 20, 1e-5)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (2, 3)
  assert "wi_1" not in params["decoder"]["layers_2"]["mlp"]


EXPORT_CASES = {
    "v1_1_untied_scan": T5Config(vocab_size=VOCAB, emb_dim=32, num_encoder_layers=2, num_decoder_layers=3, num_heads=4,
                                 head_dim=8, mlp_dim=48, scan_layers=True),
    "v1_1_tied_unscaled": T5Config(vocab_size=VOCAB, emb_dim=32, num_encoder_layers=3, num_decoder_layers=2,
                                   num_heads=2, head_dim=16, mlp_dim=40, tie_embeddings=True,
                                   scale_decoder_outputs=False),
    "original": T5Config(vocab_size=VOCAB, emb_dim=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
                         head_dim=8, mlp_dim=64, mlp_activation="relu", gated_mlp=False, tie_embeddings=True,
                         relative_attention_num_buckets=16, relative_attention_max_distance=24),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_matches_torch(tmp_path, case):
  cfg = EXPORT_CASES[case]
  params = _random_itjax(cfg)
  hf_t5.save_hf_dir(cfg, params, tmp_path)
  model, info = transformers.T5ForConditionalGeneration.from_pretrained(
      tmp_path, attn_implementation="eager", output_loading_info=True)
  model.eval()
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  ours = _itjax_logits(cfg, params, ENC, DEC, encoder_segment_ids=ENC_MASK)
  diff = np.abs(ours - _torch_logits(model, ENC, DEC, ENC_MASK)).max()
  assert diff < TOL, f"{case}: max |logit diff| {diff}"
  back_cfg, back = hf_t5.load_hf_dir(tmp_path, scan_layers=cfg.scan_layers)
  assert back_cfg == dataclasses.replace(cfg, scale_decoder_outputs=cfg.scales_decoder_outputs)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_sharded_export_round_trip(tmp_path):
  cfg = EXPORT_CASES["original"]
  params = _random_itjax(cfg, seed=1)
  hf_t5.save_hf_dir(cfg, params, tmp_path, max_shard_bytes=20_000)
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  back_cfg, back = hf_t5.load_hf_dir(tmp_path)
  assert back_cfg == dataclasses.replace(cfg, scale_decoder_outputs=True)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def _pad_to(rows: np.ndarray, n: int) -> np.ndarray:
  return np.pad(rows, ((0, 0), (0, n - rows.shape[1])))


@pytest.mark.parametrize("case", ["v1_1_untied", "original"])
def test_greedy_decode_matches_generate(hf_dirs, case):
  path, model = hf_dirs[case]
  cfg, params = hf_t5.load_hf_dir(path)
  n = 8
  enc, mask = ENC[:, :30].copy(), ENC_MASK[:, :30]
  enc[mask == 0] = 0

  def generate(eos):
    with torch.no_grad():
      seq = model.generate(input_ids=torch.from_numpy(enc.astype(np.int64)),
                           attention_mask=torch.from_numpy(mask.astype(np.int64)), do_sample=False, num_beams=1,
                           max_new_tokens=n, eos_token_id=eos, pad_token_id=0, decoder_start_token_id=0,
                           use_cache=False)  # transformers' cache breaks when num_decoder_layers > num_layers
    return _pad_to(seq.numpy()[:, 1:], n)

  ours = np.asarray(greedy_decode(T5(cfg), params, jnp.asarray(enc), jnp.asarray(mask), max_new_tokens=n, eos_id=1))
  np.testing.assert_array_equal(ours, generate(1))
  if case != "v1_1_untied":
    return  # the EOS check compiles again; once is enough
  # Pretend row 0's third token is EOS: row 0 stops there (zeros after), like generate's padding.
  eos = int(ours[0, 2])
  ours = np.asarray(greedy_decode(T5(cfg), params, jnp.asarray(enc), jnp.asarray(mask), max_new_tokens=n,
                                  eos_id=eos))
  assert (ours[0, 3:] == 0).all()
  np.testing.assert_array_equal(ours, generate(eos))


def _packed_inputs():
  """Row 0 packs examples A and B (then padding); returns packed arrays and the examples alone."""
  ea, eb = ENC[0, :6], ENC[1, :9]
  da, db = DEC[0, :4], DEC[1, :7]
  enc = np.zeros((1, 18), np.int32)
  enc[0, :6], enc[0, 6:15] = ea, eb
  dec = np.zeros((1, 13), np.int32)
  dec[0, :4], dec[0, 4:11] = da, db
  kw = dict(
      encoder_segment_ids=np.array([[1] * 6 + [2] * 9 + [0] * 3], np.int32),
      encoder_positions=np.array([list(range(6)) + list(range(9)) + [0] * 3], np.int32),
      decoder_segment_ids=np.array([[1] * 4 + [2] * 7 + [0] * 2], np.int32),
      decoder_positions=np.array([list(range(4)) + list(range(7)) + [0] * 2], np.int32),
  )
  return enc, dec, kw, (ea, da), (eb, db)


def test_packing_matches_separate_examples():
  cfg = dataclasses.replace(EXPORT_CASES["v1_1_untied_scan"], scan_layers=False, num_encoder_layers=1)
  params = _random_itjax(cfg, seed=3)
  enc, dec, kw, (ea, da), (eb, db) = _packed_inputs()
  out = _itjax_logits(cfg, params, enc, dec, **kw)
  alone_a = _itjax_logits(cfg, params, ea[None], da[None])
  alone_b = _itjax_logits(cfg, params, eb[None], db[None])
  assert np.abs(out[0, :4] - alone_a[0]).max() < 1e-5
  assert np.abs(out[0, 4:11] - alone_b[0]).max() < 1e-5


def test_kv_cache_matches_full_forward_when_packed():
  """Scanned layers, a 3-token prefill then single steps, two packed examples: same logits as one full pass."""
  cfg = dataclasses.replace(EXPORT_CASES["v1_1_untied_scan"], max_decode_length=16)
  params = _random_itjax(cfg, seed=4)
  enc, dec, kw, _, _ = _packed_inputs()
  full = _itjax_logits(cfg, params, enc, dec, **kw)
  model = T5(cfg)
  enc_seg, dec_seg, dec_pos = (jnp.asarray(kw[k]) for k in ("encoder_segment_ids", "decoder_segment_ids",
                                                              "decoder_positions"))
  encoded = jax.jit(functools.partial(model.apply, method=T5.encode))(
      {"params": params}, jnp.asarray(enc), enc_seg, jnp.asarray(kw["encoder_positions"]))
  cache = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(enc), jnp.asarray(dec[:, :1]), enc_seg,
                                            decode=True))["cache"]
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)
  step = jax.jit(lambda c, t, s, p: model.apply({"params": params, "cache": c}, encoded, enc_seg, t, s, p,
                                                decode=True, mutable=["cache"], method=T5.decode))
  outs = []
  for lo, hi in [(0, 3), *((i, i + 1) for i in range(3, dec.shape[1]))]:
    logits, vars_ = step(cache, jnp.asarray(dec[:, lo:hi]), dec_seg[:, lo:hi], dec_pos[:, lo:hi])
    cache = vars_["cache"]
    outs.append(np.asarray(logits))
  cached = np.concatenate(outs, axis=1)
  assert np.abs(cached[0, :11] - full[0, :11]).max() < 1e-5


def test_dropout_only_when_not_deterministic():
  cfg = dataclasses.replace(EXPORT_CASES["original"], dropout_rate=0.2, num_encoder_layers=1, num_decoder_layers=1,
                            remat_policy="full")
  params = _random_itjax(cfg)
  apply = jax.jit(T5(cfg).apply, static_argnames="deterministic")
  args = ({"params": params}, jnp.asarray(ENC), jnp.asarray(DEC))
  ref = np.asarray(apply(*args))  # deterministic by default: no dropout rng needed
  noisy = np.asarray(apply(*args, deterministic=False, rngs={"dropout": jax.random.key(1)}))
  assert np.abs(noisy - ref).max() > 1e-3


def test_mismatch_lists_every_difference():
  cfg = EXPORT_CASES["original"]
  tensors = hf_t5.params_to_hf(cfg, _random_itjax(cfg))
  del tensors["decoder.block.1.layer.2.DenseReluDense.wi.weight"]
  tensors["encoder.block.0.layer.1.DenseReluDense.wi_1.weight"] = np.zeros((64, 32), np.float32)
  tensors["decoder.block.0.layer.1.EncDecAttention.k.weight"] = np.zeros((16, 32), np.float32)
  with pytest.raises(UserError) as err:
    hf_t5.params_from_hf(cfg, tensors)
  msg = str(err.value)
  assert "decoder.block.1.layer.2.DenseReluDense.wi.weight [64, 32]" in msg
  assert "encoder.block.0.layer.1.DenseReluDense.wi_1.weight [64, 32]" in msg
  assert "decoder.block.0.layer.1.EncDecAttention.k.weight expected [32, 32] got [16, 32]" in msg
  assert "3 differences" in msg and "\n" not in msg
  # An untied config needs the head.
  with pytest.raises(UserError, match=r"missing: lm_head.weight \[96, 32\]"):
    hf_t5.params_from_hf(dataclasses.replace(cfg, tie_embeddings=False), hf_t5.params_to_hf(cfg, _random_itjax(cfg)))


def test_params_mismatch_on_export():
  cfg = EXPORT_CASES["v1_1_untied_scan"]
  params = _random_itjax(cfg)
  del params["lm_head"]
  params["decoder"]["layers"]["mlp"]["wo"] = np.zeros((4, 4), np.float32)
  params["encoder"]["extra"] = {"w": np.zeros(3, np.float32)}
  with pytest.raises(UserError, match=r"lm_head.*encoder/extra/w.*decoder/layers/mlp/wo expected \[3, 48, 32\] got"):
    hf_t5.params_to_hf(cfg, params)


def test_pickle_only_directory_is_refused(tmp_path, hf_dirs):
  (tmp_path / "config.json").write_text((hf_dirs["original"][0] / "config.json").read_text())
  (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
  with pytest.raises(UserError, match="safetensors"):
    hf_t5.load_hf_dir(tmp_path)


@pytest.mark.parametrize("change, pattern", [
    ({"model_type": "bart"}, "unsupported model_type 'bart'"),
    ({"feed_forward_proj": "gated-silu"}, "unsupported feed_forward_proj 'gated-silu'"),
    ({"feed_forward_proj": "gelu"}, "unsupported feed_forward_proj 'gelu'"),
    ({"d_kv": None, "num_heads": 4}, "lacks required key 'd_kv'"),
])
def test_unsupported_configs(change, pattern):
  hf = {"model_type": "t5", **TINY, **change}
  hf = {k: v for k, v in hf.items() if v is not None}
  with pytest.raises(UserError, match=pattern):
    hf_t5.config_from_hf(hf)


def test_export_rejects_unsupported_mlp():
  with pytest.raises(UserError, match="gated relu"):
    hf_t5.config_to_hf(dataclasses.replace(EXPORT_CASES["original"], gated_mlp=True))


def test_interface_gives_the_encoder_prompts_as_t5_tokenizers_do(hf_dirs):
  """Task inputs carry no EOS; the interface appends it, as HF's T5 tokenizer does: generate then agrees with HF's."""
  from itjax.models.families import interface_for

  path, model = hf_dirs["v1_1_untied"]
  cfg, params = hf_t5.load_hf_dir(path)
  rng = np.random.default_rng(5)
  prompts = [rng.integers(2, VOCAB, size=n).tolist() for n in (5, 11)]
  ours = interface_for(T5(cfg)).generate(params, prompts, max_new_tokens=6, eos_id=1)
  for p, row in zip(prompts, ours, strict=True):
    with torch.no_grad():
      seq = model.generate(input_ids=torch.tensor([p + [1]]), do_sample=False, num_beams=1, max_new_tokens=6,
                           eos_token_id=1, pad_token_id=0, decoder_start_token_id=0, use_cache=False)
    np.testing.assert_array_equal(row, _pad_to(seq.numpy()[:, 1:], 6)[0])
