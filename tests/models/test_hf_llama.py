"""Hugging Face interchange: imported/exported tiny Llama, Mistral and Qwen2 models match torch logits.

Models are built from configs with random weights in the test (no downloads), saved as safetensors,
and compared in fp32 against transformers' eager implementation.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from itjax.errors import UserError  # noqa: E402
from itjax.models import hf_decoder as hf_llama  # noqa: E402
from itjax.models.decoder import Decoder, DecoderConfig  # noqa: E402

torch.set_num_threads(1)

TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128)
TOL = 1e-4
_rng = np.random.default_rng(0)
TOKENS = _rng.integers(0, TINY["vocab_size"], size=(2, 16)).astype(np.int32)

HF_CASES = {
    "llama_gqa": (transformers.LlamaConfig, dict(rms_norm_eps=1e-5)),
    "llama_tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "llama_head_dim": (transformers.LlamaConfig, dict(head_dim=32, num_key_value_heads=1)),
    "llama_rope_llama3": (transformers.LlamaConfig, dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64))),
    "llama_rope_linear": (transformers.LlamaConfig, dict(rope_theta=5000.0,
                                                         rope_scaling={"type": "linear", "factor": 2.0})),
    "mistral": (transformers.MistralConfig, {}),
    "qwen2": (transformers.Qwen2Config, {}),
}


def _randomize_torch(model) -> None:
  """Replaces HF's tiny init (std 0.02, unit norms, zero biases) with weights that make every mapping matter."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name:
        p.copy_(1.0 + 0.2 * noise)
      elif name.endswith("bias"):
        p.copy_(0.5 * noise)
      else:
        p.copy_(noise * p.shape[-1] ** -0.5)


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()


def _itjax_logits(cfg: DecoderConfig, params, tokens: np.ndarray, **kw) -> np.ndarray:
  with jax.default_matmul_precision("highest"):
    return np.asarray(jax.jit(Decoder(cfg).apply)({"params": params}, jnp.asarray(tokens), **kw))


def _random_itjax(cfg: DecoderConfig, seed: int = 0):
  """Initialized params with noise on every leaf (norm scales and biases are not 1 / 0)."""
  params = nn.meta.unbox(Decoder(cfg).init(jax.random.PRNGKey(seed), jnp.asarray(TOKENS))["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32), params)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """case name -> (saved directory, eager torch model)."""
  out = {}
  for name, (config_cls, extra) in HF_CASES.items():
    torch.manual_seed(0)
    config = config_cls(**{**TINY, **extra}, attn_implementation="eager")
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    _randomize_torch(model)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path, safe_serialization=True)
    out[name] = (path, model)
  return out


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_import_matches_torch(hf_dirs, case):
  path, model = hf_dirs[case]
  cfg, params = hf_llama.load_hf_dir(path)
  diff = np.abs(_itjax_logits(cfg, params, TOKENS) - _torch_logits(model, TOKENS)).max()
  assert diff < TOL, f"{case}: max |logit diff| {diff}"


def test_import_config_fields(hf_dirs):
  cfg, params = hf_llama.load_hf_dir(hf_dirs["llama_gqa"][0])
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.norm_eps) == (4, 2, 16, 1e-5)
  assert not cfg.tie_embeddings and "lm_head" in params
  cfg, params = hf_llama.load_hf_dir(hf_dirs["llama_tied"][0])
  assert cfg.tie_embeddings and "lm_head" not in params
  assert hf_llama.load_hf_dir(hf_dirs["qwen2"][0])[0].attention_bias
  cfg = hf_llama.load_hf_dir(hf_dirs["llama_rope_linear"][0])[0]
  assert cfg.rope_theta == 5000.0 and dict(cfg.rope_scaling) == {"rope_type": "linear", "factor": 2.0}
  assert hf_llama.load_hf_dir(hf_dirs["llama_head_dim"][0])[0].head_dim == 32


def test_defaults_match_transformers():
  """Keys absent from config.json get transformers' own defaults (rms eps, rope theta, kv heads, head_dim)."""
  minimal = dict(vocab_size=128, hidden_size=256, num_hidden_layers=2, num_attention_heads=32, intermediate_size=128)
  for config_cls in (transformers.LlamaConfig, transformers.MistralConfig, transformers.Qwen2Config):
    ref = config_cls(**minimal)
    cfg = hf_llama.config_from_hf({"model_type": ref.model_type, **minimal})
    assert cfg.norm_eps == ref.rms_norm_eps
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"]
    assert cfg.num_kv_heads == ref.num_key_value_heads
    assert cfg.head_dim == getattr(ref, "head_dim", 8)


def test_scan_layers_import(hf_dirs):
  path, model = hf_dirs["qwen2"]
  cfg, params = hf_llama.load_hf_dir(path, scan_layers=True)
  assert cfg.scan_layers and params["layers"]["attn"]["q_kernel"].shape == (2, 64, 4, 16)
  diff = np.abs(_itjax_logits(cfg, params, TOKENS) - _torch_logits(model, TOKENS)).max()
  assert diff < TOL
  # Unstacking on export gives back the original tensors.
  unscanned_cfg, unscanned = hf_llama.load_hf_dir(path)
  a, b = hf_llama.params_to_hf(cfg, params), hf_llama.params_to_hf(unscanned_cfg, unscanned)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


EXPORT_CASES = {
    "llama": (DecoderConfig(vocab_size=128, emb_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                            mlp_dim=128, norm_eps=1e-5), "llama"),
    "llama_tied_llama3": (DecoderConfig(
        vocab_size=128, emb_dim=64, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=96,
        tie_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32}), "llama"),
    "mistral_linear_scan": (DecoderConfig(vocab_size=128, emb_dim=64, num_layers=3, num_heads=4, num_kv_heads=2,
                                          head_dim=16, mlp_dim=128, rope_scaling={"rope_type": "linear", "factor": 3.0},
                                          scan_layers=True), "mistral"),
    "qwen2": (DecoderConfig(vocab_size=128, emb_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                            mlp_dim=128, attention_bias=True), "qwen2"),
}


def _from_pretrained(path):
  return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_matches_torch(tmp_path, case):
  cfg, model_type = EXPORT_CASES[case]
  params = _random_itjax(cfg)
  hf_llama.save_hf_dir(cfg, params, tmp_path, model_type=model_type)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model_type"] == model_type and config["architectures"] == [hf_llama.ARCHITECTURES[model_type]]
  model = _from_pretrained(tmp_path)
  assert model.config.model_type == model_type
  diff = np.abs(_itjax_logits(cfg, params, TOKENS) - _torch_logits(model, TOKENS)).max()
  assert diff < TOL, f"{case}: max |logit diff| {diff}"
  # And back: the config survives the round trip (itjax-only fields aside).
  back_cfg, _ = hf_llama.load_hf_dir(tmp_path, scan_layers=cfg.scan_layers)
  assert back_cfg == dataclasses.replace(cfg, max_decode_length=back_cfg.max_decode_length)


def test_sharded_export_round_trip(tmp_path):
  cfg, _ = EXPORT_CASES["llama"]
  params = _random_itjax(cfg, seed=1)
  hf_llama.save_hf_dir(cfg, params, tmp_path, max_shard_bytes=40_000)
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 2 and not os.path.exists(tmp_path / "model.safetensors")
  assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  diff = np.abs(_itjax_logits(cfg, params, TOKENS) - _torch_logits(_from_pretrained(tmp_path), TOKENS)).max()
  assert diff < TOL
  back_cfg, back = hf_llama.load_hf_dir(tmp_path)
  assert back_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, back, params)
  # Saving again unsharded removes the stale shards and index.
  hf_llama.save_hf_dir(cfg, params, tmp_path)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_bfloat16_round_trip(tmp_path, hf_dirs):
  cfg, _ = EXPORT_CASES["qwen2"]
  params = _random_itjax(cfg, seed=2)
  hf_llama.save_hf_dir(cfg, params, tmp_path / "ours", model_type="qwen2", dtype="bfloat16")
  assert json.loads((tmp_path / "ours" / "config.json").read_text())["dtype"] == "bfloat16"
  _, back = hf_llama.load_hf_dir(tmp_path / "ours")
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16).astype(np.float32), params)
  jax.tree.map(np.testing.assert_array_equal, back, rounded)
  model = _from_pretrained(tmp_path / "ours")
  assert next(model.parameters()).dtype == torch.bfloat16
  # A bf16 checkpoint written by transformers reads too (into fp32 params by default, or bf16 on request).
  path, model = hf_dirs["llama_gqa"]
  model.to(torch.bfloat16).save_pretrained(tmp_path / "theirs", safe_serialization=True)
  model.to(torch.float32)
  bf_cfg, bf = hf_llama.load_hf_dir(tmp_path / "theirs", param_dtype="bfloat16")
  assert bf["embedding"].dtype == jnp.bfloat16
  _, fp = hf_llama.load_hf_dir(path)
  np.testing.assert_array_equal(np.asarray(bf["layers_1"]["mlp"]["wo"], np.float32),
                                fp["layers_1"]["mlp"]["wo"].astype(jnp.bfloat16).astype(np.float32))


def test_packing_matches_separate_examples():
  cfg = EXPORT_CASES["qwen2"][0]
  params = _random_itjax(cfg, seed=3)
  a, b = TOKENS[0, :5], TOKENS[1, :7]
  packed = np.zeros((1, 14), np.int32)
  packed[0, :5], packed[0, 5:12] = a, b
  segments = np.array([[1] * 5 + [2] * 7 + [0] * 2], np.int32)
  positions = np.array([list(range(5)) + list(range(7)) + [0, 0]], np.int32)
  out = _itjax_logits(cfg, params, packed, segment_ids=jnp.asarray(segments), positions=jnp.asarray(positions))
  alone_a = _itjax_logits(cfg, params, a[None])
  alone_b = _itjax_logits(cfg, params, b[None])
  assert np.abs(out[0, :5] - alone_a[0]).max() < 1e-5
  assert np.abs(out[0, 5:12] - alone_b[0]).max() < 1e-5


def test_mismatch_lists_every_difference():
  cfg = EXPORT_CASES["llama"][0]
  tensors = hf_llama.params_to_hf(cfg, _random_itjax(cfg))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.0.self_attn.rotary_extra.weight"] = np.zeros((3, 3), np.float32)
  tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
  with pytest.raises(UserError) as err:
    hf_llama.params_from_hf(cfg, tensors)
  msg = str(err.value)
  assert "model.layers.1.mlp.up_proj.weight [128, 64]" in msg
  assert "model.layers.0.self_attn.rotary_extra.weight [3, 3]" in msg
  assert "model.layers.0.self_attn.k_proj.weight expected [32, 64] got [16, 64]" in msg
  assert "3 differences" in msg and "\n" not in msg


def test_params_mismatch_on_export():
  cfg = EXPORT_CASES["llama"][0]
  params = _random_itjax(cfg)
  del params["lm_head"]
  params["layers_0"]["mlp"]["wo"] = np.zeros((4, 4), np.float32)
  params["layers_0"]["extra"] = {"w": np.zeros(3, np.float32)}
  with pytest.raises(UserError, match=r"lm_head.*layers_0/extra/w.*layers_0/mlp/wo expected \[128, 64\] got \[4, 4\]"):
    hf_llama.params_to_hf(cfg, params)


def test_pickle_only_directory_is_refused(tmp_path, hf_dirs):
  (tmp_path / "config.json").write_text((hf_dirs["llama_gqa"][0] / "config.json").read_text())
  (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
  with pytest.raises(UserError, match="safetensors"):
    hf_llama.load_hf_dir(tmp_path)


def test_missing_config_names_path(tmp_path):
  with pytest.raises(UserError, match=str(tmp_path / "config.json")):
    hf_llama.load_hf_dir(tmp_path)


@pytest.mark.parametrize("change, pattern", [
    ({"model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
    ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "unsupported RoPE type 'yarn'"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_unsupported_configs(change, pattern):
  hf = {"model_type": "llama", **TINY, **change}
  with pytest.raises(UserError, match=pattern):
    hf_llama.config_from_hf(hf)


def test_export_rejects_bias_mismatch(tmp_path):
  with pytest.raises(UserError, match="qwen2"):
    hf_llama.config_to_hf(EXPORT_CASES["qwen2"][0], "llama")
  with pytest.raises(UserError, match="q/k/v biases"):
    hf_llama.config_to_hf(EXPORT_CASES["llama"][0], "qwen2")
