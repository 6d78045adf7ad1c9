"""Hugging Face interchange for Llama-family decoders (Llama, Mistral, Qwen2).

Maps HF `config.json` <-> `DecoderConfig`, HF tensor names <-> itjax params, and
reads / writes HF model directories, so checkpoints move both ways without torch.
Only safetensors are read: pickle files (`pytorch_model.bin`) can run code when
loaded and are refused.

Known limit: the decoder always uses full causal attention. Mistral's
`sliding_window` is accepted (identical results for sequences no longer than the
window); Qwen2 configs that really use sliding windows are refused.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes  # registers bfloat16 with numpy, so safetensors can hand back bf16 arrays
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from itjax.errors import UserError
from itjax.models.decoder import DecoderConfig

Params = dict[str, Any]
Shapes = dict[str, tuple[int, ...]]

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_ROPE_TYPES = ("default", "linear", "llama3")
# transformers' defaults when config.json omits num_key_value_heads (llama: one kv head per query head).
_DEFAULT_KV_HEADS = {"mistral": 8, "qwen2": 32}
_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}
# Buffers some older checkpoints carry; they are recomputed, never loaded.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_SHARD = "model-{:05d}-of-{:05d}.safetensors"
_PICKLE_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


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
  )
  try:
    return dataclasses.replace(cfg, **overrides)
  except TypeError as e:
    raise UserError(f"bad DecoderConfig override: {e}") from None


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
  if not cfg.tie_embeddings:
    out["lm_head"] = (cfg.emb_dim, cfg.vocab_size)
  return out


def hf_shapes(cfg: DecoderConfig) -> Shapes:
  """Expected HF tensor shapes keyed by tensor name."""
  _, layer = _layer_shapes(cfg)
  out: Shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.emb_dim), "model.norm.weight": (cfg.emb_dim,)}
  for i in range(cfg.num_layers):
    out.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = (cfg.vocab_size, cfg.emb_dim)
  return out


def _natural_key(name: str) -> list[Any]:
  """Sort key that puts layers.2 before layers.10."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _check_shapes(expected: Shapes, actual: Shapes, what: str) -> None:
  """Raises UserError listing every missing, unexpected and mis-shaped entry (one line)."""
  missing = sorted(expected.keys() - actual.keys(), key=_natural_key)
  extra = sorted(actual.keys() - expected.keys(), key=_natural_key)
  wrong = sorted((n for n in expected.keys() & actual.keys() if tuple(expected[n]) != tuple(actual[n])),
                 key=_natural_key)
  if not (missing or extra or wrong):
    return
  parts = []
  if missing:
    parts.append("missing: " + ", ".join(f"{n} {list(expected[n])}" for n in missing))
  if extra:
    parts.append("unexpected: " + ", ".join(f"{n} {list(actual[n])}" for n in extra))
  if wrong:
    parts.append("wrong shape: " + ", ".join(f"{n} expected {list(expected[n])} got {list(actual[n])}"
                                             for n in wrong))
  count = len(missing) + len(extra) + len(wrong)
  raise UserError(f"{what} does not match the model config ({count} differences): " + "; ".join(parts))


def _shape_of(tensors: Mapping[str, Any], name: str) -> tuple[int, ...]:
  """Shape without reading data when the mapping can tell it (lazy safetensors)."""
  shape_of = getattr(tensors, "shape_of", None)
  return tuple(shape_of(name)) if shape_of else tuple(np.shape(tensors[name]))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, path + "/"))
    else:
      out[path] = value
  return out


def _unflatten(flat: Mapping[str, Any]) -> Params:
  out: Params = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out


# ----------------------------------------------------------------------------- tensors <-> params


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
  actual = {name: _shape_of(tensors, name) for name in tensors if not _IGNORED.search(name)}
  if cfg.tie_embeddings and actual.get("lm_head.weight") == (cfg.vocab_size, cfg.emb_dim):
    del actual["lm_head.weight"]
  _check_shapes(hf_shapes(cfg), actual, "Hugging Face checkpoint")
  dtype = np.dtype(cfg.params_dtype)

  def get(name: str) -> np.ndarray:
    return np.asarray(tensors[name]).astype(dtype, copy=False)

  flat = {"embedding": np.ascontiguousarray(get("model.embed_tokens.weight")),
          "final_norm/scale": np.ascontiguousarray(get("model.norm.weight"))}
  if not cfg.tie_embeddings:
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
  return _unflatten(flat)


def params_to_hf(cfg: DecoderConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """HF tensors (contiguous numpy, dtype of the params) from itjax params; UserError lists every mismatch."""
  flat = _flatten(nn.meta.unbox(dict(params)))
  _check_shapes(param_shapes(cfg), {name: tuple(np.shape(v)) for name, v in flat.items()}, "itjax params")
  flat = jax.device_get(flat)
  out = {"model.embed_tokens.weight": np.asarray(flat["embedding"]),
         "model.norm.weight": np.asarray(flat["final_norm/scale"])}
  for i in range(cfg.num_layers):
    if cfg.scan_layers:
      leaf = lambda name, i=i: np.asarray(flat[f"layers/{name}"])[i]  # noqa: E731
    else:
      leaf = lambda name, i=i: np.asarray(flat[f"layers_{i}/{name}"])  # noqa: E731
    out.update(_layer_to_hf(cfg, leaf, f"model.layers.{i}."))
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = np.asarray(flat["lm_head"]).T
  return {name: np.ascontiguousarray(value) for name, value in out.items()}


# ----------------------------------------------------------------------------- directories


class _SafetensorsTensors(Mapping):
  """Read-only name -> numpy view over several safetensors files; reads a tensor only when indexed."""

  def __init__(self, files: list[str]):
    self._where: dict[str, Any] = {}
    for file in files:
      handle = safe_open(file, framework="np")
      for name in handle.keys():
        if name in self._where:
          raise UserError(f"tensor {name!r} appears in more than one safetensors file ({file})")
        self._where[name] = handle

  def __getitem__(self, name: str) -> np.ndarray:
    return self._where[name].get_tensor(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)

  def shape_of(self, name: str) -> tuple[int, ...]:
    return tuple(self._where[name].get_slice(name).get_shape())


def _weight_files(path: str) -> list[str]:
  """The safetensors files of an HF model directory (index first); refuses pickle-only directories."""
  index = os.path.join(path, _INDEX)
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"{index}: unreadable safetensors index ({e})") from None
    files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    absent = [f for f in files if not os.path.exists(f)]
    if absent:
      raise UserError(f"{index} names shard files that do not exist: {', '.join(absent)}")
    return files
  single = os.path.join(path, _SINGLE)
  if os.path.exists(single):
    return [single]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if files:
    return files
  pickles = sorted(os.path.basename(f) for pattern in _PICKLE_GLOBS for f in glob.glob(os.path.join(path, pattern)))
  if pickles:
    raise UserError(f"{path} has only pickle weights ({', '.join(pickles)}); safetensors are required "
                    "(pickle files can run code when loaded, so they are never read). Convert them to "
                    "*.safetensors first, e.g. with transformers: save_pretrained(..., safe_serialization=True).")
  raise UserError(f"{path} has no *.safetensors weights")


def load_hf_dir(path: str | os.PathLike, **overrides: Any) -> tuple[DecoderConfig, Params]:
  """Reads an HF model directory (config.json + safetensors, single or sharded) into (cfg, numpy params).

  `overrides` replace DecoderConfig fields (e.g. scan_layers=True, param_dtype="bfloat16").
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise UserError(f"{path}: not a directory (expected a Hugging Face model directory)")
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise UserError(f"{config_path} not found (a Hugging Face model directory needs config.json)")
  try:
    with open(config_path) as f:
      hf_config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{config_path}: unreadable ({e})") from None
  cfg = config_from_hf(hf_config, **overrides)
  return cfg, params_from_hf(cfg, _SafetensorsTensors(_weight_files(path)))


def _shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: int) -> list[dict[str, np.ndarray]]:
  """Greedy split in name order; a tensor larger than the limit gets a shard of its own."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors, key=_natural_key):
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  return shards


def save_hf_dir(cfg: DecoderConfig, params: Mapping[str, Any], path: str | os.PathLike, model_type: str = "llama",
                dtype: str = "float32", max_shard_bytes: int = 5 * 10**9) -> None:
  """Writes an HF model directory (config.json + safetensors, sharded past max_shard_bytes).

  The result loads with `transformers.AutoModelForCausalLM.from_pretrained(path)`. Stale weight files
  from an earlier save (model.safetensors, model-*-of-*.safetensors, the index) are removed first.
  """
  write_hf_dir(path, config_to_hf(cfg, model_type), params_to_hf(cfg, params), dtype, max_shard_bytes)


def write_hf_dir(path: str | os.PathLike, hf_config: dict, hf_tensors: Mapping[str, np.ndarray], dtype: str,
                 max_shard_bytes: int) -> None:
  """Writes config.json and safetensors weights (sharded with an index past `max_shard_bytes`), removing
  stale weight files from an earlier save; shared by every HF model family's export."""
  if dtype not in _NP_DTYPES:
    raise UserError(f"unknown export dtype {dtype!r}; expected one of {sorted(_NP_DTYPES)}")
  if max_shard_bytes <= 0:
    raise UserError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
  hf_config = {**hf_config, "dtype": dtype, "torch_dtype": dtype}
  np_dtype = _NP_DTYPES[dtype]
  tensors = {name: value.astype(np_dtype, copy=False) for name, value in hf_tensors.items()}

  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  for stale in [_SINGLE, _INDEX, *map(os.path.basename, glob.glob(os.path.join(path, "model-*-of-*.safetensors")))]:
    if os.path.exists(os.path.join(path, stale)):
      os.remove(os.path.join(path, stale))
  shards = _shards(tensors, max_shard_bytes)
  metadata = {"format": "pt"}  # transformers checks this header field
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, _SINGLE), metadata=metadata)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      name = _SHARD.format(i + 1, len(shards))
      save_file(shard, os.path.join(path, name), metadata=metadata)
      weight_map.update({tensor: name for tensor in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    with open(os.path.join(path, _INDEX), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
    f.write("\n")
