"""PEFT hooks in both model families: identity at init, LoRA merge equivalence, prefix masks, dropout."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itjax.errors import UserError
from itjax.models.decoder import DecoderConfig
from itjax.models.families import build_model
from itjax.models.peft_hooks import combine, flatten, split, with_peft
from itjax.models.t5 import T5Config
from itjax.peft import adapters, lora, merge_lora, prefix_tuning
from itjax.peft.method import check_peft, check_targets, lora_kernels

DEC = DecoderConfig(vocab_size=64, emb_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48)
T5C = T5Config(vocab_size=64, emb_dim=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, head_dim=8,
               mlp_dim=48)
ALL_LORA = lora(rank=4, alpha=8.0, target_modules="all-linear")
TOKENS = np.random.default_rng(0).integers(1, 64, size=(2, 12)).astype(np.int32)


def _inputs(cfg):
  return (TOKENS, TOKENS[:, :8]) if isinstance(cfg, T5Config) else (TOKENS,)


def _init(cfg, seed=0):
  return nn.unbox(build_model(cfg).init(jax.random.key(seed), *_inputs(cfg))["params"])


def _logits(cfg, params, **kw):
  return np.asarray(build_model(cfg).apply({"params": params}, *_inputs(cfg), **kw))


def _randomize(tree, seed=1, scale=0.1):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in
                                                zip(leaves, keys, strict=True)])


CASES = {"decoder": DEC, "decoder_scan": dataclasses.replace(DEC, scan_layers=True), "t5": T5C,
         "t5_scan_remat": dataclasses.replace(T5C, scan_layers=True, remat_policy="full")}


@pytest.mark.parametrize("name,peft", [
    *(pytest.param(n, ALL_LORA, id=f"lora-{n}", marks=[pytest.mark.slow] if "scan" in n else [])
      for n in CASES),
    pytest.param("decoder", adapters(bottleneck_dim=8), id="adapters-decoder"),
    pytest.param("t5_scan_remat", adapters(bottleneck_dim=8), id="adapters-t5_scan_remat", marks=pytest.mark.slow)])
def test_zero_initialized_lora_and_adapters_leave_outputs_unchanged(name, peft):
  cfg = CASES[name]
  base = _init(cfg)
  full = _init(with_peft(cfg, peft), seed=3)
  frozen, trainable = split(full)
  assert jax.tree_util.tree_structure(frozen) == jax.tree_util.tree_structure(base)  # no base leaf added or lost
  assert trainable, "the method created no trainable variables"
  np.testing.assert_array_equal(_logits(with_peft(cfg, peft), combine(base, trainable)), _logits(cfg, base))


def test_method_off_adds_no_params():
  for cfg in CASES.values():
    assert not split(jax.eval_shape(lambda cfg=cfg: _init(cfg)))[1]


def test_lora_shapes_follow_the_kernels_in_and_out_dims():
  flat = flatten(split(_init(with_peft(DEC, ALL_LORA)))[1])
  assert flat["layers_0/attn/q_kernel_lora_a"].shape == (32, 4)  # [embed, r]
  assert flat["layers_0/attn/q_kernel_lora_b"].shape == (4, 4, 8)  # [r, heads, head_dim]
  assert flat["layers_0/attn/k_kernel_lora_b"].shape == (4, 2, 8)  # [r, kv_heads, head_dim]
  assert flat["layers_0/attn/o_kernel_lora_a"].shape == (4, 8, 4)  # [heads, head_dim, r]
  assert flat["layers_1/mlp/wo_lora_b"].shape == (4, 32)
  assert not np.any(flat["layers_0/attn/q_kernel_lora_b"])
  scan = flatten(split(_init(with_peft(dataclasses.replace(DEC, scan_layers=True), ALL_LORA)))[1])
  assert scan["layers/attn/q_kernel_lora_a"].shape == (2, 32, 4)  # stacked like every scanned param


def test_lora_partitioning_keeps_the_kernels_logical_axes():
  boxed = jax.eval_shape(lambda r: build_model(with_peft(DEC, ALL_LORA)).init(r, TOKENS)["params"], jax.random.key(0))
  attn = boxed["layers_0"]["attn"]
  assert attn["q_kernel_lora_a"].names == ("embed", None)
  assert attn["q_kernel_lora_b"].names == (None, "heads", "kv")
  assert attn["o_kernel_lora_a"].names == ("heads", "kv", None)


def test_default_targets_are_q_and_v_only():
  flat = flatten(split(_init(with_peft(DEC, lora())))[1])
  assert sorted({k.split("/")[-1] for k in flat}) == ["q_kernel_lora_a", "q_kernel_lora_b", "v_kernel_lora_a",
                                                     "v_kernel_lora_b"]


@pytest.mark.parametrize("name", ["decoder", pytest.param("decoder_scan", marks=pytest.mark.slow), "t5"])
def test_merged_and_unmerged_lora_give_the_same_logits(name):
  cfg = CASES[name]
  peft = ALL_LORA
  frozen, trainable = split(_init(with_peft(cfg, peft)))
  params = combine(frozen, _randomize(trainable))
  unmerged = _logits(with_peft(cfg, peft), params)
  merged = _logits(cfg, merge_lora(params, peft))
  assert np.abs(unmerged - _logits(cfg, frozen)).max() > 1e-2  # the update matters
  np.testing.assert_allclose(merged, unmerged, atol=2e-5, rtol=2e-5)


def test_merge_refuses_prefix_and_adapters():
  with pytest.raises(UserError, match="only LoRA merges"):
    merge_lora({}, adapters())


def test_target_patterns_accept_hf_names_and_regexes_and_refuse_strays():
  assert "layers_0/mlp/wi_0" in lora_kernels(DEC)
  check_targets(DEC, lora(target_modules=["gate_proj", "down_proj"]))
  check_targets(T5C, lora(target_modules="cross_attn/q_kernel"))
  with pytest.raises(UserError, match="lora.target_modules pattern 'embedding'"):
    check_targets(DEC, lora(target_modules="embedding"))
  with pytest.raises(UserError, match=r"train.peft=.*with the parentheses"):
    check_peft(DEC, lora)  # `train.peft = @lora` (the function, not its result)
  with pytest.raises(UserError, match="lora.rank"):
    lora(rank=0)
  with pytest.raises(UserError, match="lora.target_modules"):
    lora(target_modules="q_(")


@pytest.mark.parametrize("cfg", [DEC, T5C], ids=["decoder", "t5"])
def test_lora_dropout_acts_only_with_a_dropout_rng(cfg):
  peft = lora(rank=4, dropout=0.5, target_modules="all-linear")
  frozen, trainable = split(_init(with_peft(cfg, peft)))
  params = combine(frozen, _randomize(trainable))
  pcfg = with_peft(cfg, peft)
  eval_logits = _logits(pcfg, params)
  np.testing.assert_array_equal(eval_logits, _logits(pcfg, params))
  train = _logits(pcfg, params, rngs={"dropout": jax.random.key(5)})
  assert np.abs(train - eval_logits).max() > 1e-3
  np.testing.assert_allclose(_logits(with_peft(cfg, dataclasses.replace(peft, lora_dropout=0.0)), params,
                                     rngs={"dropout": jax.random.key(5)}), eval_logits, atol=1e-6)


def test_prefix_shapes_and_packed_rows_see_the_prefix_like_separate_rows():
  peft = prefix_tuning(num_prefix_tokens=3, init_scale=0.5)
  cfg = with_peft(DEC, peft)
  params = _init(cfg)
  flat = flatten(split(params)[1])
  assert flat["layers_0/attn/prefix_key"].shape == (3, 2, 8)  # [prefix, kv_heads, head_dim]
  model = build_model(cfg)
  a, b = TOKENS[0, :5], TOKENS[1, :7]
  packed = np.concatenate([a, b])[None]
  seg = np.array([[1] * 5 + [2] * 7])
  pos = np.array([list(range(5)) + list(range(7))])
  out = np.asarray(model.apply({"params": params}, packed, seg, pos))[0]
  np.testing.assert_allclose(out[:5], np.asarray(model.apply({"params": params}, a[None]))[0], atol=1e-5)
  np.testing.assert_allclose(out[5:], np.asarray(model.apply({"params": params}, b[None]))[0], atol=1e-5)
  base = _logits(DEC, split(params)[0])
  assert np.abs(_logits(cfg, params) - base).max() > 1e-3  # the prefix is attended to


def test_prefix_decoding_with_the_kv_cache_matches_the_full_forward():
  cfg = with_peft(DEC, prefix_tuning(num_prefix_tokens=3, init_scale=0.5))
  params = _init(cfg)
  model = build_model(cfg)
  full = np.asarray(model.apply({"params": params}, TOKENS))
  cache = jax.tree_util.tree_map(jnp.zeros_like, model.init(jax.random.key(0), TOKENS[:, :1], decode=True)["cache"])
  steps = []
  for t in range(TOKENS.shape[1]):
    logits, mut = model.apply({"params": params, "cache": cache}, TOKENS[:, t:t + 1], jnp.ones((2, 1), jnp.int32),
                              jnp.full((2, 1), t), decode=True, mutable=["cache"])
    cache = mut["cache"]
    steps.append(np.asarray(logits)[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4)


def test_t5_prefix_reaches_encoder_decoder_and_cross_attention():
  cfg = with_peft(T5C, prefix_tuning(num_prefix_tokens=2, init_scale=0.5))
  flat = flatten(split(_init(cfg))[1])
  assert {"encoder/layers_0/attn/prefix_key", "decoder/layers_1/self_attn/prefix_value",
          "decoder/layers_1/cross_attn/prefix_key"} <= set(flat)
  assert flat["encoder/layers_0/attn/prefix_key"].shape == (2, 4, 8)
  params = _init(cfg)
  assert np.abs(_logits(cfg, params) - _logits(T5C, split(params)[0])).max() > 1e-3


def test_adapter_sites_in_both_families():
  dec = flatten(split(_init(with_peft(DEC, adapters(bottleneck_dim=8))))[1])
  assert dec["layers_0/attn_adapter_down"].shape == (32, 8) and dec["layers_1/mlp_adapter_up"].shape == (8, 32)
  t5 = flatten(split(_init(with_peft(T5C, adapters(bottleneck_dim=8))))[1])
  assert {"encoder/layers_0/attn_adapter_up", "decoder/layers_0/cross_attn_adapter_up",
          "decoder/layers_0/self_attn_adapter_down", "decoder/layers_1/mlp_adapter_down_bias"} <= set(t5)


def test_peft_config_round_trips_through_model_config_json(tmp_path):
  from itjax.core.model_dir import load_model_config, save_model_config

  for cfg in (with_peft(DEC, ALL_LORA), with_peft(T5C, prefix_tuning()), DEC):
    save_model_config(str(tmp_path), cfg)
    assert load_model_config(str(tmp_path)) == cfg
