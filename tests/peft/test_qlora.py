"""QLoRA: frozen kernels stored int8 / NF4, dequantized per matmul in both families, learning on top, exact merges."""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import norm
from test_training import _batch  # noqa: E402  (the same tiny batch as the float LoRA tests)

from itjax.cli import main
from itjax.convert.peft_adapter import save_merged_hf
from itjax.core import mesh as partitioning
from itjax.core.checkpoints import Checkpointer
from itjax.core.model_dir import ModelDir, load_model_config
from itjax.core.trainable import TrainState, trainable_for
from itjax.errors import UserError
from itjax.models import quant
from itjax.models.decoder import DecoderConfig
from itjax.models.families import build_model, family_of
from itjax.models.peft_hooks import combine, flatten, split, with_peft
from itjax.models.t5 import T5Config
from itjax.peft import lora, merge_lora
from itjax.peft.method import check_peft, init_trainable
from itjax.train.step import train_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "tests", "tiny.gin")
# Every kernel's last input dim (emb 32, head_dim 16, mlp 64) is a multiple of the test's NF4 block of 16.
DEC = DecoderConfig(vocab_size=64, emb_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=64)
T5C = T5Config(vocab_size=64, emb_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_heads=4, head_dim=16,
               mlp_dim=64)
CASES = {"decoder": DEC, "decoder_scan": dataclasses.replace(DEC, scan_layers=True), "t5": T5C,
         "t5_scan": dataclasses.replace(T5C, scan_layers=True)}
BLOCK = 16
TOKENS = np.random.default_rng(0).integers(1, 64, size=(2, 12)).astype(np.int32)
KERNEL = ("q_kernel", "k_kernel", "v_kernel", "o_kernel", "wi_0", "wi_1", "wo")


def _qlora(fmt, **kw):
  return lora(rank=4, alpha=8.0, target_modules="all-linear", quantize_base=fmt, quant_block_size=BLOCK, **kw)


def _inputs(cfg):
  return (TOKENS, TOKENS[:, :8]) if isinstance(cfg, T5Config) else (TOKENS,)


def _logits(cfg, params):
  with jax.default_matmul_precision("highest"):
    return np.asarray(jax.jit(build_model(cfg).apply)({"params": params}, *_inputs(cfg)))


def _noisy(tree, seed, scale):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [x + scale * jax.random.normal(k, x.shape)
                                                for x, k in zip(leaves, keys, strict=True)])


def _params(cfg, peft, seed=0, scale=0.2):
  """(quantized frozen base, noisy LoRA variables: B is not zero, so the update matters)."""
  base = nn.unbox(jax.jit(build_model(cfg).init)(jax.random.key(seed), *_inputs(cfg))["params"])
  frozen = quant.quantize_tree(base, peft.base_quant, peft.quant_block_size)
  return frozen, _noisy(init_trainable(with_peft(cfg, peft), jax.random.key(seed + 1)), seed + 2, scale)


# ----------------------------------------------------------------------------- quantize / dequantize


@pytest.mark.parametrize("shape,in_axes", [((96, 40), (0,)), ((3, 8, 4, 16), (1, 2))], ids=["mlp", "scanned_o"])
def test_int8_round_trip_is_within_half_a_step_of_each_output_channel(shape, in_axes):
  w = np.asarray(jax.random.normal(jax.random.key(0), shape)) * np.linspace(0.1, 3.0, shape[-1])
  w[..., 0] = 0.0  # an all-zero channel dequantizes to zeros
  q = quant.quantize_int8(w, in_axes)
  assert q["codes"].dtype == jnp.int8 and q["codes"].shape == shape
  absmax = np.abs(w).max(axis=in_axes, keepdims=True)
  np.testing.assert_allclose(q["scale"], absmax / 127, rtol=1e-6)
  deq = np.asarray(quant.dequantize(q))
  assert np.all(np.abs(deq - w) <= np.asarray(q["scale"]) / 2 * (1 + 1e-5) + 1e-12)
  assert np.all(np.abs(np.asarray(q["codes"])).max(axis=in_axes)[..., 1:] == 127)  # absmax maps to +-127 exactly
  np.testing.assert_array_equal(deq[..., 0], 0.0)


def _bnb_nf4() -> np.ndarray:
  """bitsandbytes' create_normal_map(offset=0.9677083): 8 positive and 7 negative N(0,1) quantiles, 0, over max."""
  offset = 0.9677083
  pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
  neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
  v = np.sort(np.concatenate([pos, [0.0], neg]))
  return v / np.abs(v).max()


def test_nf4_codebook_is_the_qlora_normal_float_table():
  np.testing.assert_allclose(quant.NF4_CODEBOOK, _bnb_nf4(), atol=2e-7)
  assert quant.NF4_CODEBOOK[7] == 0.0 and quant.NF4_CODEBOOK[0] == -1.0 and quant.NF4_CODEBOOK[15] == 1.0


@pytest.mark.parametrize("shape,axis", [((128, 24), 0), ((2, 4, 64, 8), 2)], ids=["kernel", "scanned_o"])
def test_nf4_round_trip_picks_the_nearest_code_of_each_block(shape, axis):
  block = 64 if shape[axis] % 64 == 0 else 32
  w = np.asarray(jax.random.normal(jax.random.key(1), shape), np.float32)
  q = quant.quantize_nf4(w, axis, block)
  codes, scale = np.asarray(q["codes"]), np.asarray(q["scale"])
  assert codes.dtype == np.uint8 and codes.shape[axis] == shape[axis] // 2 and scale.shape[axis] == shape[axis] // block
  # Unpacked by hand: the first of each pair in the high nibble, as bitsandbytes packs.
  idx = np.stack([codes >> 4, codes & 15], axis=axis + 1).reshape(shape)
  blocks = lambda x: np.moveaxis(x, axis, -1).reshape(*np.moveaxis(x, axis, -1).shape[:-1], -1, block)
  wb, ib = blocks(w), blocks(idx)
  absmax = np.abs(wb).max(-1, keepdims=True)
  np.testing.assert_allclose(np.moveaxis(scale, axis, -1)[..., None], absmax, rtol=1e-6)
  nearest = np.abs((wb / absmax)[..., None] - quant.NF4_CODEBOOK).argmin(-1)
  np.testing.assert_array_equal(ib, nearest)  # no ties in random data
  deq = np.asarray(quant.dequantize(q))
  np.testing.assert_allclose(blocks(deq), quant.NF4_CODEBOOK[nearest] * absmax, rtol=1e-6)
  gap = np.diff(quant.NF4_CODEBOOK).max() / 2  # 0.152: half the widest step of the table
  assert np.all(np.abs(blocks(deq) - wb) <= gap * absmax * (1 + 1e-6))
  assert np.abs(deq - w).mean() < 0.1 * np.abs(w).mean()  # typical error far below the bound


def test_quantize_tree_keeps_logical_axes_and_quantizes_only_attention_and_mlp_kernels():
  boxed = build_model(DEC).init(jax.random.key(0), *_inputs(DEC))["params"]
  q = quant.quantize_tree(boxed, "nf4", BLOCK)
  for path, leaf in flatten(nn.unbox(q)).items():
    parts = path.split("/")
    quantized = parts[-1] in ("codes", "scale") and parts[-2] in KERNEL
    assert quantized or (parts[-1] not in KERNEL and leaf.dtype == jnp.float32), path
    assert not quantized or leaf.dtype == (jnp.uint8 if parts[-1] == "codes" else jnp.float32), path
  o = q["layers_0"]["attn"]["o_kernel"]
  assert o["codes"].names == ("heads", "kv", "embed") and o["scale"].names == ("heads", None, "embed")
  wi = quant.quantize_tree(boxed, "int8")["layers_0"]["mlp"]["wi_0"]
  assert wi["codes"].names == ("embed", "mlp") and wi["scale"].names == (None, "mlp")


# ----------------------------------------------------------------------------- the models


# make test: one case per family and format; the scanned variants run with -m slow.
@pytest.mark.parametrize("name,fmt", [("decoder", "nf4"), ("t5", "int8"), *(
    pytest.param(n, f, marks=pytest.mark.slow)
    for n, f in [("decoder", "int8"), ("t5", "nf4"), ("decoder_scan", "int8"), ("decoder_scan", "nf4"),
                 ("t5_scan", "int8"), ("t5_scan", "nf4")])])
def test_quantized_base_gives_the_logits_of_its_dequantized_kernels(name, fmt):
  cfg, peft = CASES[name], _qlora(fmt)
  frozen, trainable = _params(cfg, peft)
  pcfg = with_peft(cfg, peft)
  ours = _logits(pcfg, combine(frozen, trainable))
  dequantized = combine(quant.dequantize_tree(frozen), trainable)
  np.testing.assert_allclose(ours, _logits(pcfg, dequantized), atol=1e-6, rtol=1e-6)
  # The plain model with the dequantized kernels (LoRA off) differs: the LoRA branch is applied on top.
  assert np.abs(ours - _logits(cfg, split(dequantized)[0])).max() > 1e-2


def test_the_step_reads_the_dequantized_kernels_in_the_compute_dtype():
  cfg = dataclasses.replace(DEC, dtype="bfloat16")
  peft = _qlora("nf4")
  frozen, trainable = _params(cfg, peft)
  ours = _logits(with_peft(cfg, peft), combine(frozen, trainable))
  ref = _logits(with_peft(cfg, peft), combine(quant.dequantize_tree(frozen), trainable))
  np.testing.assert_allclose(ours, ref, atol=1e-6)  # dequantized to fp32, cast to bf16: as the float model




@pytest.mark.parametrize("name,fmt", [("decoder_scan", "nf4"), pytest.param("t5", "int8", marks=pytest.mark.slow)])
def test_lora_on_a_quantized_base_learns_and_the_codes_stay(name, fmt):
  cfg = with_peft(CASES[name], _qlora(fmt))
  strategy = trainable_for(cfg, seed=0)
  mesh, rules = partitioning.create_mesh((2, 2, 2)), partitioning.DEFAULT_RULES
  optimizer = optax.adam(3e-2)
  state, _ = strategy.create_state(optimizer, mesh, rules, jax.random.key(1))
  frozen = strategy.load_frozen(mesh, rules)
  stored = flatten(frozen)
  assert {k.rsplit("/", 1)[-1] for k in stored if k.endswith(("/codes", "/scale"))} == {"codes", "scale"}
  before = {k: np.array(v) for k, v in stored.items()}
  step = jax.jit(lambda s, b, f: train_step(s, b, f, model=build_model(cfg), optimizer=optimizer,
                                            trainable=strategy, schedule=lambda _: 3e-2))
  losses = []
  with jax.set_mesh(mesh):
    for _ in range(12):
      state, metrics = step(state, _batch(cfg), {"base": frozen})
      losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses
  for k, v in flatten(frozen).items():
    np.testing.assert_array_equal(np.asarray(v), before[k])
  assert isinstance(state, TrainState)


@pytest.mark.parametrize("name,fmt", [("decoder", "nf4"), ("t5", "nf4"), *(
    pytest.param(n, f, marks=pytest.mark.slow) for n, f in [("decoder_scan", "int8"), ("t5_scan", "int8")])])
def test_merged_logits_equal_the_dequantized_base_plus_lora(name, fmt, tmp_path):
  cfg, peft = CASES[name], _qlora(fmt)
  # LoRA noise 0.05 (not 0.2): x.(W + AB) and x.W + (x.A).B round differently, and larger updates with larger
  # logits would measure that rounding (2e-5 at 0.2 on T5, quantized or not), not the dequantization.
  frozen, trainable = _params(cfg, peft, scale=0.05)
  params = combine(frozen, trainable)
  unmerged = _logits(with_peft(cfg, peft), params)
  assert np.abs(unmerged - _logits(cfg, quant.dequantize_tree(frozen))).max() > 1e-2  # the update matters
  merged = merge_lora(params, peft)
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(merged))
  np.testing.assert_allclose(_logits(cfg, merged), unmerged, atol=1e-5, rtol=0)
  # `--to_hf`'s writer, read back by the family's HF reader: the same model.
  save_merged_hf(with_peft(cfg, peft), params, str(tmp_path / "hf"))
  hf_cfg, hf_params = family_of(cfg).hf.read_dir(str(tmp_path / "hf"))
  np.testing.assert_allclose(_logits(hf_cfg, jax.tree_util.tree_map(jnp.asarray, hf_params)), unmerged, atol=1e-5,
                             rtol=0)


# ----------------------------------------------------------------------------- the frozen tree


def _kernel_bytes(tree) -> tuple[int, int]:
  """(bytes of the quantizable kernels, of every other leaf)."""
  kern = other = 0
  for path, x in flatten(tree).items():
    n = int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
    parts = path.split("/")
    if parts[-1] in KERNEL or (parts[-1] in ("codes", "scale") and parts[-2] in KERNEL):
      kern += n
    else:
      other += n
  return kern, other


def test_frozen_kernels_take_a_quarter_int8_and_about_an_eighth_nf4_of_fp32():
  cfg = DecoderConfig(vocab_size=256, emb_dim=256, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=64,
                      mlp_dim=512, scan_layers=True)
  mesh, rules = partitioning.create_mesh(), partitioning.DEFAULT_RULES
  sizes = {fmt: _kernel_bytes(trainable_for(with_peft(cfg, lora(quantize_base=fmt))).abstract_frozen(mesh, rules))
           for fmt in (None, "int8", "nf4")}
  fp32, rest = sizes[None]
  assert sizes["int8"][1] == sizes["nf4"][1] == rest  # embeddings, head, norms untouched
  assert 0.25 < sizes["int8"][0] / fp32 < 0.26  # 1 byte + a fp32 scale per output channel
  assert sizes["nf4"][0] / fp32 == pytest.approx((0.5 + 4 / 64) / 4)  # 4 bits + a fp32 scale per 64: 4.5 bits


def test_quantized_base_restores_from_a_checkpoint_sharded_like_the_float_one(tmp_path):
  cfg = with_peft(DEC, _qlora("nf4", base_dtype="bfloat16"))
  base = nn.unbox(build_model(DEC).init(jax.random.key(3), *_inputs(DEC))["params"])
  ckpt = Checkpointer(str(tmp_path), period=1, keep=None, async_save=False)
  ckpt.save(0, {"params": base}, {}, force=True)
  ckpt.wait()
  ckpt.close()
  mesh, rules = partitioning.create_mesh((1, 4, 2)), partitioning.DEFAULT_RULES
  strategy = trainable_for(cfg, initial_checkpoint=str(tmp_path))
  frozen = strategy.load_frozen(mesh, rules)
  want = quant.quantize_tree(jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), base), "nf4", BLOCK)
  flat, abstract = flatten(frozen), flatten(strategy.abstract_frozen(mesh, rules))
  assert flat.keys() == flatten(want).keys() == abstract.keys()
  for k, v in flatten(want).items():
    np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(v))
    assert flat[k].sharding.is_equivalent_to(abstract[k].sharding, v.ndim) and flat[k].dtype == abstract[k].dtype
  q = frozen["layers_0"]["attn"]["q_kernel"]
  assert tuple(q["codes"].sharding.spec) == ("fsdp", "tensor", None)  # embed (packed), heads: as the float base
  assert tuple(q["scale"].sharding.spec) == (None, "tensor", None) and q["scale"].dtype == jnp.float32
  assert frozen["embedding"].dtype == jnp.bfloat16


def test_bad_quantization_settings_are_user_errors_naming_the_gin_parameter():
  with pytest.raises(UserError, match=r"^lora\.quantize_base='fp4'"):
    lora(quantize_base="fp4")
  with pytest.raises(UserError, match=r"^lora\.quant_block_size=3 "):
    lora(quantize_base="nf4", quant_block_size=3)
  with pytest.raises(UserError, match=r"^lora\.base_dtype='nf4' .*lora\.quantize_base='nf4'"):
    lora(base_dtype="nf4")
  with pytest.raises(UserError, match=r"^lora\.quant_block_size=64 does not divide layers_0/attn/[kqvo]_kernel"):
    check_peft(DEC, lora(quantize_base="nf4"))  # head_dim 16
  check_peft(DEC, lora(quantize_base="int8"))  # int8 has no blocks


# ----------------------------------------------------------------------------- itjax train / convert


@pytest.mark.slow
def test_qlora_trains_through_gin_and_exports_merged(tmp_path):
  run = tmp_path / "run"
  assert main(["train", f"--gin_file={TINY}", f"--model_dir={run}", "--gin.EVAL_MIXTURES=None", "--gin.TRAIN_STEPS=2",
               "--gin.CHECKPOINT_PERIOD=2", "--gin.train.peft=@lora()", "--gin.lora.target_modules='all-linear'",
               "--gin.lora.quantize_base='nf4'", "--gin.lora.quant_block_size=16"]) == 0
  cfg = load_model_config(str(run))
  assert cfg.peft.base_quant == "nf4" and cfg.peft.quant_block_size == 16
  assert "attention and MLP kernels nf4" in (run / "model-info.txt").read_text().splitlines()[0]
  loaded = ModelDir.open(str(run)).load(partitioning.create_mesh(), partitioning.logical_axis_rules())
  assert quant.is_quantized(loaded.params["layers_0"]["attn"]["q_kernel"])
  assert main(["convert", "--to_hf", str(tmp_path / "hf"), "--checkpoint", str(run)]) == 0
  hf_cfg, hf_params = family_of(cfg).hf.read_dir(str(tmp_path / "hf"))
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 259, size=(2, 12)), jnp.int32)
  with jax.default_matmul_precision("highest"):
    ours = np.asarray(loaded.interface.model.apply({"params": loaded.params}, tokens))
    exported = np.asarray(build_model(hf_cfg).apply({"params": jax.tree_util.tree_map(jnp.asarray, hf_params)},
                                                    tokens))
  np.testing.assert_allclose(exported, ours, atol=1e-5, rtol=0)
