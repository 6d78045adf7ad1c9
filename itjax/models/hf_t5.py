"""Hugging Face interchange for T5 encoder-decoders (T5 v1.1 / Flan-T5 and original T5).

Maps HF `config.json` <-> `T5Config`, HF tensor names <-> itjax params, and reads / writes HF
model directories that `transformers.T5ForConditionalGeneration` loads. Only safetensors are
read (pickle `.bin` files can run code when loaded and are refused).

Tying: transformers 5 writes `tie_word_embeddings: true` for every T5 and keeps the output
scaling in `scale_decoder_outputs`; it unties the head when the checkpoint's `lm_head.weight`
differs from `shared.weight`. `load_hf_dir` follows the same rule.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from itjax.errors import UserError
from itjax.models import hf_io
from itjax.models.hf_io import Params, Shapes
from itjax.models.t5 import T5Config

ARCHITECTURE = "T5ForConditionalGeneration"
MODEL_TYPES = ("t5",)
# feed_forward_proj -> (mlp_activation, gated_mlp); HF's "gated-gelu" means the tanh approximation (gelu_new).
_FEED_FORWARD = {"gated-gelu": ("gelu", True), "relu": ("relu", False)}
# Copies of the shared embedding and a never-used decoder cross-attention bias that older checkpoints carry.
_IGNORED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$"
                      r"|^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$")


# ----------------------------------------------------------------------------- config


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> T5Config:
  """T5Config from an HF `config.json` dict; `overrides` set itjax-only fields (dtype, scan_layers, ...)."""
  model_type = hf_config.get("model_type")
  if model_type != "t5":
    raise UserError(f"unsupported model_type {model_type!r}; only 't5' (T5, T5 v1.1, Flan-T5) is supported")
  proj = hf_config.get("feed_forward_proj", "relu")
  if proj not in _FEED_FORWARD:
    raise UserError(f"unsupported feed_forward_proj {proj!r}; supported: {', '.join(sorted(_FEED_FORWARD))}")
  act, gated = _FEED_FORWARD[proj]
  dense_act = hf_config.get("dense_act_fn")
  if dense_act not in (None, "gelu_new" if gated else act):
    raise UserError(f"dense_act_fn {dense_act!r} contradicts feed_forward_proj {proj!r}")
  if hf_config.get("is_encoder_decoder") is False:
    raise UserError("is_encoder_decoder=false (encoder-only T5) is not supported")
  tie = hf_config.get("tie_word_embeddings", True) is not False
  scale = hf_config.get("scale_decoder_outputs")
  try:
    layers = int(hf_config["num_layers"])
    fields = dict(
        vocab_size=int(hf_config["vocab_size"]),
        emb_dim=int(hf_config["d_model"]),
        num_encoder_layers=layers,
        num_decoder_layers=int(hf_config.get("num_decoder_layers") or layers),
        num_heads=int(hf_config["num_heads"]),
        head_dim=int(hf_config["d_kv"]),
        mlp_dim=int(hf_config["d_ff"]),
    )
  except KeyError as e:
    raise UserError(f"HF t5 config lacks required key {e.args[0]!r}") from None
  cfg = T5Config(
      **fields,
      mlp_activation=act,
      gated_mlp=gated,
      tie_embeddings=tie,
      scale_decoder_outputs=tie if scale is None else bool(scale),
      relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
      dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
      norm_eps=float(hf_config.get("layer_norm_epsilon", 1e-6)),
      eos_id=int(hf_config.get("eos_token_id", 1)),
  )
  try:
    return dataclasses.replace(cfg, **overrides)
  except (TypeError, ValueError) as e:
    raise UserError(f"bad T5Config override: {e}") from None


def config_to_hf(cfg: T5Config) -> dict[str, Any]:
  """HF `config.json` dict for `cfg`, readable by transformers 4.x and 5.x.

  transformers 4 ties the scaling to tying, so a tied head without scaling only round-trips through 5.x.
  """
  proj = {v: k for k, v in _FEED_FORWARD.items()}.get((cfg.mlp_activation, cfg.gated_mlp))
  if proj is None:
    raise UserError(f"HF T5 has no {'gated ' if cfg.gated_mlp else ''}{cfg.mlp_activation} MLP; "
                    "supported: gated gelu (v1.1 / Flan-T5) and ungated relu (original T5)")
  return {
      "architectures": [ARCHITECTURE],
      "model_type": "t5",
      "vocab_size": cfg.vocab_size,
      "d_model": cfg.emb_dim,
      "d_kv": cfg.head_dim,
      "d_ff": cfg.mlp_dim,
      "num_layers": cfg.num_encoder_layers,
      "num_decoder_layers": cfg.num_decoder_layers,
      "num_heads": cfg.num_heads,
      "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
      "relative_attention_max_distance": cfg.relative_attention_max_distance,
      "dropout_rate": cfg.dropout_rate,
      "layer_norm_epsilon": cfg.norm_eps,
      "initializer_factor": 1.0,
      "feed_forward_proj": proj,
      "dense_act_fn": "gelu_new" if cfg.gated_mlp else cfg.mlp_activation,
      "is_gated_act": cfg.gated_mlp,
      # transformers 4 reads the scaling from tie_word_embeddings; 5 from scale_decoder_outputs.
      "tie_word_embeddings": cfg.tie_embeddings,
      "scale_decoder_outputs": cfg.scales_decoder_outputs,
      "is_encoder_decoder": True,
      "use_cache": True,
      "pad_token_id": 0,
      "eos_token_id": cfg.eos_id,
      "decoder_start_token_id": 0,
  }


# ----------------------------------------------------------------------------- names and shapes


def _attention(ours: str, theirs: str) -> list[tuple[str, str, str]]:
  """(itjax leaf, HF tensor, kind) for one attention block."""
  return [(f"{ours}/{n}_kernel", f"{theirs}.{n}.weight", "out" if n == "o" else "in") for n in "qkvo"]


def _mlp(theirs: str, cfg: T5Config) -> list[tuple[str, str, str]]:
  wi = ["wi_0", "wi_1"] if cfg.gated_mlp else ["wi"]
  out = [(f"mlp/wi_{i}", f"{theirs}.DenseReluDense.{name}.weight", "dense") for i, name in enumerate(wi)]
  return out + [("mlp/wo", f"{theirs}.DenseReluDense.wo.weight", "dense")]


def _layer_names(cfg: T5Config, stack: str) -> list[tuple[str, str, str]]:
  """(itjax leaf within a layer, HF suffix within block i, kind); kinds say how shapes transform."""
  if stack == "encoder":
    return [("attn_norm/scale", "layer.0.layer_norm.weight", "norm"),
            *_attention("attn", "layer.0.SelfAttention"),
            ("mlp_norm/scale", "layer.1.layer_norm.weight", "norm"), *_mlp("layer.1", cfg)]
  return [("self_attn_norm/scale", "layer.0.layer_norm.weight", "norm"),
          *_attention("self_attn", "layer.0.SelfAttention"),
          ("cross_attn_norm/scale", "layer.1.layer_norm.weight", "norm"),
          *_attention("cross_attn", "layer.1.EncDecAttention"),
          ("mlp_norm/scale", "layer.2.layer_norm.weight", "norm"), *_mlp("layer.2", cfg)]


def _shapes(cfg: T5Config, kind: str, ours: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(itjax shape, HF shape) of a leaf of this kind."""
  e, h, d, m = cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  if kind == "norm":
    return (e,), (e,)
  if kind == "in":
    return (e, h, d), (h * d, e)
  if kind == "out":
    return (h, d, e), (e, h * d)
  return ((m, e), (e, m)) if ours.endswith("wo") else ((e, m), (m, e))


def _num_layers(cfg: T5Config, stack: str) -> int:
  return cfg.num_encoder_layers if stack == "encoder" else cfg.num_decoder_layers


def param_shapes(cfg: T5Config) -> Shapes:
  """Expected itjax param shapes keyed by '/'-joined path (honours scan_layers and tie_embeddings)."""
  nb, e = cfg.relative_attention_num_buckets, cfg.emb_dim
  out: Shapes = {"embedding": (cfg.vocab_size, e)}
  for stack in ("encoder", "decoder"):
    n = _num_layers(cfg, stack)
    out[f"{stack}/relpos_bias/rel_embedding"] = (nb, cfg.num_heads)
    out[f"{stack}/final_norm/scale"] = (e,)
    for ours, _, kind in _layer_names(cfg, stack):
      shape = _shapes(cfg, kind, ours)[0]
      if cfg.scan_layers:
        out[f"{stack}/layers/{ours}"] = (n, *shape)
      else:
        out.update({f"{stack}/layers_{i}/{ours}": shape for i in range(n)})
  if not cfg.tie_embeddings:
    out["lm_head"] = (e, cfg.vocab_size)
  return out


def hf_shapes(cfg: T5Config) -> Shapes:
  """Expected HF tensor shapes keyed by tensor name."""
  nb, e = cfg.relative_attention_num_buckets, cfg.emb_dim
  out: Shapes = {"shared.weight": (cfg.vocab_size, e)}
  for stack in ("encoder", "decoder"):
    out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (nb, cfg.num_heads)
    out[f"{stack}.final_layer_norm.weight"] = (e,)
    for i in range(_num_layers(cfg, stack)):
      out.update({f"{stack}.block.{i}.{theirs}": _shapes(cfg, kind, ours)[1]
                  for ours, theirs, kind in _layer_names(cfg, stack)})
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = (cfg.vocab_size, e)
  return out


def _from_hf(x: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  """HF torch layout ([out, in]) -> itjax layout of `shape`."""
  return x if kind == "norm" else x.T.reshape(shape)


def _to_hf(x: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  """itjax layout -> HF layout of `shape` ([out, in])."""
  if kind == "norm":
    return x
  return x.reshape(shape[::-1]).T


# ----------------------------------------------------------------------------- tensors <-> params


def params_from_hf(cfg: T5Config, tensors: Mapping[str, np.ndarray]) -> Params:
  """itjax params (numpy, cfg.param_dtype) from HF tensors; UserError lists every name/shape mismatch.

  `tensors` may be a dict or a lazy safetensors view; each tensor is read once. With a tied cfg a
  correctly shaped `lm_head.weight` is ignored, as are embedding copies (`encoder.embed_tokens`).
  """
  get = hf_io.checked_reader(tensors, hf_shapes(cfg), ignored=_IGNORED, dtype=cfg.params_dtype,
                       tied_head=(cfg.vocab_size, cfg.emb_dim) if cfg.tie_embeddings else None)
  dtype = np.dtype(cfg.params_dtype)
  flat = {"embedding": get("shared.weight")}
  if not cfg.tie_embeddings:
    flat["lm_head"] = get("lm_head.weight").T
  for stack in ("encoder", "decoder"):
    n = _num_layers(cfg, stack)
    flat[f"{stack}/relpos_bias/rel_embedding"] = get(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    flat[f"{stack}/final_norm/scale"] = get(f"{stack}.final_layer_norm.weight")
    for ours, theirs, kind in _layer_names(cfg, stack):
      shape = _shapes(cfg, kind, ours)[0]
      if cfg.scan_layers:
        # Preallocated [num_layers, ...] so stacking never holds two copies of every layer.
        stacked = np.empty((n, *shape), dtype)
        for i in range(n):
          stacked[i] = _from_hf(get(f"{stack}.block.{i}.{theirs}"), kind, shape)
        flat[f"{stack}/layers/{ours}"] = stacked
      else:
        for i in range(n):
          flat[f"{stack}/layers_{i}/{ours}"] = _from_hf(get(f"{stack}.block.{i}.{theirs}"), kind, shape)
  return hf_io.unflatten({name: np.ascontiguousarray(value) for name, value in flat.items()})


def params_to_hf(cfg: T5Config, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """HF tensors (contiguous numpy, dtype of the params) from itjax params; UserError lists every mismatch."""
  if cfg.score_head:
    raise UserError("a T5 reward model (T5Config.score_head) has no Hugging Face export: HF's "
                    "T5ForSequenceClassification pools another way, through another head")
  flat = hf_io.flatten(nn.meta.unbox(dict(params)))
  hf_io.check_shapes(param_shapes(cfg), {name: tuple(np.shape(v)) for name, v in flat.items()}, "itjax params")
  flat = {name: np.asarray(value) for name, value in jax.device_get(flat).items()}
  out = {"shared.weight": flat["embedding"]}
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = flat["lm_head"].T
  for stack in ("encoder", "decoder"):
    out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        flat[f"{stack}/relpos_bias/rel_embedding"])
    out[f"{stack}.final_layer_norm.weight"] = flat[f"{stack}/final_norm/scale"]
    for ours, theirs, kind in _layer_names(cfg, stack):
      shape = _shapes(cfg, kind, ours)[1]
      for i in range(_num_layers(cfg, stack)):
        value = flat[f"{stack}/layers/{ours}"][i] if cfg.scan_layers else flat[f"{stack}/layers_{i}/{ours}"]
        out[f"{stack}.block.{i}.{theirs}"] = _to_hf(value, kind, shape)
  return {name: np.ascontiguousarray(value) for name, value in out.items()}


# ----------------------------------------------------------------------------- directories


def load_hf_dir(path: str | os.PathLike, **overrides: Any) -> tuple[T5Config, Params]:
  """Reads an HF T5 directory (config.json + safetensors, single or sharded) into (cfg, numpy params).

  `overrides` replace T5Config fields (e.g. scan_layers=True, dropout_rate=0.0). Unless
  `tie_embeddings` is overridden, a head marked tied whose `lm_head.weight` differs from
  `shared.weight` is untied, as transformers does.
  """
  path = os.fspath(path)
  cfg = hf_io.config_of(path, lambda c: config_from_hf(c, **overrides))
  tensors = hf_io.read_tensors(path)
  if cfg.tie_embeddings and "tie_embeddings" not in overrides and "lm_head.weight" in tensors:
    head = tensors["lm_head.weight"]
    if head.shape == (cfg.vocab_size, cfg.emb_dim) and not np.array_equal(head, tensors["shared.weight"]):
      cfg = dataclasses.replace(cfg, tie_embeddings=False)
  return cfg, params_from_hf(cfg, tensors)


def save_hf_dir(cfg: T5Config, params: Mapping[str, Any], path: str | os.PathLike, model_type: str = "t5",
                dtype: str = "float32", max_shard_bytes: int = 5 * 10**9) -> None:
  """Writes an HF model directory (config.json + safetensors, sharded past max_shard_bytes).

  The result loads with `transformers.T5ForConditionalGeneration.from_pretrained(path)`. Stale weight
  files from an earlier save (model.safetensors, model-*-of-*.safetensors, the index) are removed first.
  """
  if model_type not in MODEL_TYPES:
    raise UserError(f"a T5 model exports only as model_type t5, not {model_type!r}")
  hf_io.write_hf_dir(path, config_to_hf(cfg), params_to_hf(cfg, params), dtype, max_shard_bytes)


def module_names(cfg: T5Config) -> dict[str, str]:
  """itjax kernel path (`<stack>/layers_<i>/...`, unscanned) -> HF module name, for every projection kernel
  (peft's adapter format names modules this way)."""
  table = {}
  for stack in ("encoder", "decoder"):
    for ours, theirs, kind in _layer_names(cfg, stack):
      if kind != "norm":
        table.update({f"{stack}/layers_{i}/{ours}": f"{stack}.block.{i}.{theirs.removesuffix('.weight')}"
                      for i in range(_num_layers(cfg, stack))})
  return table
