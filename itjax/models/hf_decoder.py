"""Hugging Face interchange for the decoder family (Llama, Mistral, Qwen2).

Maps HF `config.json` <-> `DecoderConfig`, HF tensor names <-> itjax params, and
reads / writes HF model directories (through `hf_io`), so checkpoints move both
ways without torch; also the names peft's adapter format gives the decoder's modules.

Known limit: the decoder always uses full causal attention. Mistral's
`sliding_window` is accepted (identical results for sequences no longer than the
window); Qwen2 configs that really use sliding windows are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from itjax.errors import UserError
from itjax.models import hf_io
from itjax.models.decoder import DecoderConfig, apply_rope, rope_inv_freq
from itjax.models.hf_io import Params, Shapes

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
MODEL_TYPES = tuple(ARCHITECTURES)  # llama first: the default export type
_ROPE_TYPES = ("default", "linear", "llama3")
# transformers' defaults when config.json omits num_key_value_heads (llama: one kv head per query head).
_DEFAULT_KV_HEADS = {"mistral": 8, "qwen2": 32}
# Buffers some older checkpoints carry; they are recomputed, never loaded.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


# ----------------------------------------------------------------------------- config


def _flat_rope_params(hf_config: Mapping[str, Any]) -> dict[str, Any]:
  """The one RoPE dict of a config: legacy `rope_scaling` wins over transformers-5 `rope_parameters`."""
  rope = hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {}
  if rope and all(isinstance(v, Mapping) or v is None for v in rope.values()):
    # Nested by layer type (e.g. {"full_attention": {...}}): fine only if every layer agrees.
    distinct = {json.dumps(v, sort_keys=True) for v in rope.values()}
    if len(distinct) != 1:
      raise UserError(f"per-layer-type RoPE parameters are not supported: {dict(rope)}")
    rope = next(iter(rope.values())) or {}
  return dict(rope)


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> DecoderConfig:
  """DecoderConfig from an HF `config.json` dict; `overrides` set itjax-only fields (dtype, scan_layers, ...)."""
  model_type = hf_config.get("model_type")
  if model_type not in ARCHITECTURES:
    raise UserError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
  act = hf_config.get("hidden_act", "silu")
  if act != "silu":
    raise UserError(f"unsupported hidden_act {act!r} for {model_type}; only 'silu' (SwiGLU) is supported")
  if hf_config.get("mlp_bias"):
    raise UserError("mlp_bias=true is not supported (the MLP has no biases)")
  if model_type == "llama" and hf_config.get("attention_bias"):
    raise UserError("llama attention_bias=true (biases on q/k/v/o) is not supported; only q/k/v biases (qwen2) are")
  if model_type == "qwen2" and hf_config.get("use_sliding_window"):
    num_layers = hf_config.get("num_hidden_layers", 0)
    if hf_config.get("sliding_window") and hf_config.get("max_window_layers", num_layers) < num_layers:
      raise UserError("qwen2 use_sliding_window=true is not supported (the decoder uses full attention)")

  try:
    hidden = int(hf_config["hidden_size"])
    heads = int(hf_config["num_attention_heads"])
    fields = dict(
        vocab_size=int(hf_config["vocab_size"]),
        emb_dim=hidden,
        num_layers=int(hf_config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf_config.get("num_key_value_heads") or _DEFAULT_KV_HEADS.get(model_type, heads)),
        head_dim=int(hf_config.get("head_dim") or hidden // heads),
        mlp_dim=int(hf_config["intermediate_size"]),
    )
  except KeyError as e:
    raise UserError(f"HF {model_type} config lacks required key {e.args[0]!r}") from None
  if fields["num_heads"] % fields["num_kv_heads"]:
    raise UserError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={fields['num_kv_heads']}")

  rope = _flat_rope_params(hf_config)
  partial = rope.get("partial_rotary_factor", hf_config.get("partial_rotary_factor"))
  if partial not in (None, 1, 1.0):
    raise UserError(f"partial_rotary_factor={partial} is not supported")
  theta = float(rope.get("rope_theta") or hf_config.get("rope_theta") or 10000.0)
  kind = rope.get("rope_type", rope.get("type")) or "default"
  if kind not in _ROPE_TYPES:
    raise UserError(f"unsupported RoPE type {kind!r}; supported: {', '.join(_ROPE_TYPES)}")
  scaling = None
  if kind != "default":
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "type", "rope_type", "partial_rotary_factor")}
    scaling = {"rope_type": kind, **scaling}
    if "factor" not in scaling:
      raise UserError(f"RoPE type {kind!r} needs a 'factor'")
    if kind == "llama3":  # transformers defaults the pretraining length like this
      scaling.setdefault("original_max_position_embeddings", hf_config.get("max_position_embeddings", 8192))

  cfg = DecoderConfig(
      **fields,
      rope_theta=theta,
      rope_scaling=scaling,
      norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
      attention_bias=model_type == "qwen2",  # llama biases were refused above; mistral has none
      score_head=_score_head(hf_config),
  )
  try:
    return dataclasses.replace(cfg, **overrides)
  except TypeError as e:
    raise UserError(f"bad DecoderConfig override: {e}") from None


def _score_head(hf_config: Mapping[str, Any]) -> bool:
  archs = hf_config.get("architectures") or []
  if any(a.endswith("ForSequenceClassification") for a in archs):
    if int(hf_config.get("num_labels", len(hf_config.get("id2label") or {0: 0}))) != 1:
      raise UserError("a *ForSequenceClassification checkpoint must have num_labels=1 (a reward model)")
    return True
  return False


def config_to_hf(cfg: DecoderConfig, model_type: str = "llama") -> dict[str, Any]:
  """HF `config.json` dict for `cfg`, readable by transformers 4.x (rope_theta/rope_scaling) and 5.x."""
  if model_type not in ARCHITECTURES:
    raise UserError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
  if model_type == "qwen2" and not cfg.attention_bias:
    raise UserError("qwen2 always has q/k/v biases; export a model without attention_bias as llama or mistral")
  if model_type != "qwen2" and cfg.attention_bias:
    raise UserError(f"{model_type} has no q/k/v-only attention biases; export this model as qwen2")
  scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
  if scaling:
    kind = scaling.pop("type", None)
    scaling["rope_type"] = scaling.get("rope_type", kind)
  # Informative for default/linear/llama3 RoPE; a llama3 model is at least good for its scaled length.
  max_positions = cfg.max_decode_length
  if scaling and "original_max_position_embeddings" in scaling:
    max_positions = max(max_positions, int(scaling["original_max_position_embeddings"] * scaling["factor"]))
  out: dict[str, Any] = {
      "architectures": [ARCHITECTURES[model_type]],
      "model_type": model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.emb_dim,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": max_positions,
      "rms_norm_eps": cfg.norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": scaling,
      "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default", **(scaling or {})},
      "initializer_range": 0.02,
      "use_cache": True,
  }
  if cfg.score_head:  # a reward model: HF pools the score at the last token that is not pad_token_id
    out.update(architectures=[ARCHITECTURES[model_type].replace("ForCausalLM", "ForSequenceClassification")],
               num_labels=1, id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0}, pad_token_id=0)
  if model_type == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  elif model_type == "mistral":
    out.update(sliding_window=None)
  else:
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  return out


# ----------------------------------------------------------------------------- shapes and checks


def _layer_shapes(cfg: DecoderConfig) -> tuple[Shapes, Shapes]:
  """Per-layer (itjax path, HF name suffix) -> shape, in matching order."""
  e, h, k, d, m = cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  ours = {
      "attn_norm/scale": (e,), "attn/q_kernel": (e, h, d), "attn/k_kernel": (e, k, d), "attn/v_kernel": (e, k, d),
      "attn/o_kernel": (h, d, e), "mlp_norm/scale": (e,), "mlp/wi_0": (e, m), "mlp/wi_1": (e, m), "mlp/wo": (m, e),
  }
  theirs = {
      "input_layernorm.weight": (e,), "self_attn.q_proj.weight": (h * d, e), "self_attn.k_proj.weight": (k * d, e),
      "self_attn.v_proj.weight": (k * d, e), "self_attn.o_proj.weight": (e, h * d),
      "post_attention_layernorm.weight": (e,), "mlp.gate_proj.weight": (m, e), "mlp.up_proj.weight": (m, e),
      "mlp.down_proj.weight": (e, m),
  }
  if cfg.attention_bias:
    ours.update({"attn/q_bias": (h, d), "attn/k_bias": (k, d), "attn/v_bias": (k, d)})
    theirs.update({"self_attn.q_proj.bias": (h * d,), "self_attn.k_proj.bias": (k * d,),
                   "self_attn.v_proj.bias": (k * d,)})
  return ours, theirs


def param_shapes(cfg: DecoderConfig) -> Shapes:
  """Expected itjax param shapes keyed by '/'-joined path (honours scan_layers and tie_embeddings)."""
  layer, _ = _layer_shapes(cfg)
  out: Shapes = {"embedding": (cfg.vocab_size, cfg.emb_dim), "final_norm/scale": (cfg.emb_dim,)}
  if cfg.scan_layers:
    out.update({f"layers/{name}": (cfg.num_layers, *shape) for name, shape in layer.items()})
  else:
    for i in range(cfg.num_layers):
      out.update({f"layers_{i}/{name}": shape for name, shape in layer.items()})
  if cfg.score_head:
    out["score"] = (cfg.emb_dim, 1)
  elif not cfg.tie_embeddings:
    out["lm_head"] = (cfg.emb_dim, cfg.vocab_size)
  return out


def hf_shapes(cfg: DecoderConfig) -> Shapes:
  """Expected HF tensor shapes keyed by tensor name."""
  _, layer = _layer_shapes(cfg)
  out: Shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.emb_dim), "model.norm.weight": (cfg.emb_dim,)}
  for i in range(cfg.num_layers):
    out.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
  if cfg.score_head:
    out["score.weight"] = (1, cfg.emb_dim)
  elif not cfg.tie_embeddings:
    out["lm_head.weight"] = (cfg.vocab_size, cfg.emb_dim)
  return out


def _layer_from_hf(cfg: DecoderConfig, get: Callable[[str], np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """One layer's itjax leaves ('/' paths) from HF tensors named `prefix` + suffix."""
  e, h, k, d = cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  out = {
      "attn_norm/scale": get(prefix + "input_layernorm.weight"),
      "attn/q_kernel": get(prefix + "self_attn.q_proj.weight").T.reshape(e, h, d),
      "attn/k_kernel": get(prefix + "self_attn.k_proj.weight").T.reshape(e, k, d),
      "attn/v_kernel": get(prefix + "self_attn.v_proj.weight").T.reshape(e, k, d),
      "attn/o_kernel": get(prefix + "self_attn.o_proj.weight").T.reshape(h, d, e),
      "mlp_norm/scale": get(prefix + "post_attention_layernorm.weight"),
      "mlp/wi_0": get(prefix + "mlp.gate_proj.weight").T,
      "mlp/wi_1": get(prefix + "mlp.up_proj.weight").T,
      "mlp/wo": get(prefix + "mlp.down_proj.weight").T,
  }
  if cfg.attention_bias:
    out["attn/q_bias"] = get(prefix + "self_attn.q_proj.bias").reshape(h, d)
    out["attn/k_bias"] = get(prefix + "self_attn.k_proj.bias").reshape(k, d)
    out["attn/v_bias"] = get(prefix + "self_attn.v_proj.bias").reshape(k, d)
  return out


def _layer_to_hf(cfg: DecoderConfig, leaf: Callable[[str], np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """Inverse of `_layer_from_hf`: HF tensors for one layer from its itjax leaves."""
  e, h, k, d, m = cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  out = {
      "input_layernorm.weight": leaf("attn_norm/scale"),
      "self_attn.q_proj.weight": leaf("attn/q_kernel").reshape(e, h * d).T,
      "self_attn.k_proj.weight": leaf("attn/k_kernel").reshape(e, k * d).T,
      "self_attn.v_proj.weight": leaf("attn/v_kernel").reshape(e, k * d).T,
      "self_attn.o_proj.weight": leaf("attn/o_kernel").reshape(h * d, e).T,
      "post_attention_layernorm.weight": leaf("mlp_norm/scale"),
      "mlp.gate_proj.weight": leaf("mlp/wi_0").reshape(e, m).T,
      "mlp.up_proj.weight": leaf("mlp/wi_1").reshape(e, m).T,
      "mlp.down_proj.weight": leaf("mlp/wo").reshape(m, e).T,
  }
  if cfg.attention_bias:
    out["self_attn.q_proj.bias"] = leaf("attn/q_bias").reshape(h * d)
    out["self_attn.k_proj.bias"] = leaf("attn/k_bias").reshape(k * d)
    out["self_attn.v_proj.bias"] = leaf("attn/v_bias").reshape(k * d)
  return {prefix + name: value for name, value in out.items()}


def params_from_hf(cfg: DecoderConfig, tensors: Mapping[str, np.ndarray]) -> Params:
  """itjax params (numpy, cfg.param_dtype) from HF tensors; UserError lists every name/shape mismatch.

  `tensors` may be any mapping (a dict, or a lazy safetensors view); each tensor is read once.
  A tied checkpoint may still carry `lm_head.weight`; it is ignored, as are rotary `inv_freq` buffers.
  """
  get = hf_io.checked_reader(tensors, hf_shapes(cfg), ignored=_IGNORED, dtype=cfg.params_dtype,
                       tied_head=(cfg.vocab_size, cfg.emb_dim) if cfg.tie_embeddings and not cfg.score_head
                       else None)
  dtype = np.dtype(cfg.params_dtype)
  flat = {"embedding": np.ascontiguousarray(get("model.embed_tokens.weight")),
          "final_norm/scale": np.ascontiguousarray(get("model.norm.weight"))}
  if cfg.score_head:
    flat["score"] = np.ascontiguousarray(get("score.weight").T)
  elif not cfg.tie_embeddings:
    flat["lm_head"] = np.ascontiguousarray(get("lm_head.weight").T)
  if cfg.scan_layers:
    # Fill preallocated [num_layers, ...] arrays so stacking never holds two copies of every layer.
    stacked: dict[str, np.ndarray] = {}
    for i in range(cfg.num_layers):
      for name, value in _layer_from_hf(cfg, get, f"model.layers.{i}.").items():
        if i == 0:
          stacked[name] = np.empty((cfg.num_layers, *value.shape), dtype)
        stacked[name][i] = value
    flat.update({f"layers/{name}": value for name, value in stacked.items()})
  else:
    for i in range(cfg.num_layers):
      flat.update({f"layers_{i}/{name}": np.ascontiguousarray(value)
                   for name, value in _layer_from_hf(cfg, get, f"model.layers.{i}.").items()})
  return hf_io.unflatten(flat)


def params_to_hf(cfg: DecoderConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """HF tensors (contiguous numpy, dtype of the params) from itjax params; UserError lists every mismatch."""
  flat = hf_io.flatten(nn.meta.unbox(dict(params)))
  if cfg.value_head:  # PPO's critic head is not part of the exported causal LM
    flat = {k: v for k, v in flat.items() if k != "value"}
  hf_io.check_shapes(param_shapes(cfg), {name: tuple(np.shape(v)) for name, v in flat.items()}, "itjax params")
  flat = jax.device_get(flat)
  out = {"model.embed_tokens.weight": np.asarray(flat["embedding"]),
         "model.norm.weight": np.asarray(flat["final_norm/scale"])}
  for i in range(cfg.num_layers):
    if cfg.scan_layers:
      leaf = lambda name, i=i: np.asarray(flat[f"layers/{name}"])[i]  # noqa: E731
    else:
      leaf = lambda name, i=i: np.asarray(flat[f"layers_{i}/{name}"])  # noqa: E731
    out.update(_layer_to_hf(cfg, leaf, f"model.layers.{i}."))
  if cfg.score_head:
    out["score.weight"] = np.asarray(flat["score"]).T
  elif not cfg.tie_embeddings:
    out["lm_head.weight"] = np.asarray(flat["lm_head"]).T
  return {name: np.ascontiguousarray(value) for name, value in out.items()}


# ----------------------------------------------------------------------------- directories


def load_hf_dir(path: str | os.PathLike, **overrides: Any) -> tuple[DecoderConfig, Params]:
  """Reads an HF model directory (config.json + safetensors, single or sharded) into (cfg, numpy params).

  `overrides` replace DecoderConfig fields (e.g. scan_layers=True, param_dtype="bfloat16").
  """
  path = os.fspath(path)
  cfg = hf_io.config_of(path, lambda c: config_from_hf(c, **overrides))
  return cfg, params_from_hf(cfg, hf_io.read_tensors(path))


def save_hf_dir(cfg: DecoderConfig, params: Mapping[str, Any], path: str | os.PathLike, model_type: str = "llama",
                dtype: str = "float32", max_shard_bytes: int = 5 * 10**9) -> None:
  """Writes an HF model directory (config.json + safetensors, sharded past max_shard_bytes).

  The result loads with `transformers.AutoModelForCausalLM.from_pretrained(path)`. Stale weight files
  from an earlier save (model.safetensors, model-*-of-*.safetensors, the index) are removed first.
  """
  hf_io.write_hf_dir(path, config_to_hf(cfg, model_type), params_to_hf(cfg, params), dtype, max_shard_bytes)


# ----------------------------------------------------------------------------- peft adapter format


def module_names(cfg: DecoderConfig) -> dict[str, str]:
  """itjax kernel path (`layers_<i>/...`, unscanned) -> HF module name, for every projection kernel."""
  ours, theirs = _layer_shapes(cfg)
  pairs = dict(zip(ours, theirs, strict=True))
  return {f"layers_{i}/{o}": f"model.layers.{i}.{t.removesuffix('.weight')}" for i in range(cfg.num_layers)
          for o, t in pairs.items() if o.endswith(("_kernel", "wi_0", "wi_1", "wo"))}


def prefix_tensors(cfg: DecoderConfig, flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """peft's `prompt_embeddings` [tokens, layers * 2 * kv_heads * head_dim] (key, value per layer) from unscanned
  '/'-paths of a prefix-tuned model.

  peft feeds the prefix as a KV cache, so HF places the real tokens after it (positions shifted by the
  prefix length); rotating the stored keys by that shift keeps every query-prefix score the same.
  """
  p = cfg.peft.prefix_tokens
  rows = []
  for i in range(cfg.num_layers):
    k = jnp.asarray(flat[f"layers_{i}/attn/prefix_key"], jnp.float32)
    k = np.asarray(apply_rope(k[None], jnp.full((1, p), p), rope_inv_freq(cfg))[0])
    v = flat[f"layers_{i}/attn/prefix_value"].astype(np.float32)
    rows += [k.reshape(p, -1), v.reshape(p, -1)]
  return {"prompt_embeddings": np.concatenate(rows, axis=1)}


def prefix_config(cfg: DecoderConfig) -> dict[str, Any]:
  """The PREFIX_TUNING fields of peft's adapter_config.json for this decoder."""
  return {"num_virtual_tokens": cfg.peft.prefix_tokens, "num_layers": cfg.num_layers,
          "token_dim": cfg.num_heads * cfg.head_dim, "num_attention_heads": cfg.num_heads,
          "num_transformer_submodules": 1, "prefix_projection": False, "encoder_hidden_size": cfg.emb_dim}
