"""PEFT exports: LoRA merged into an HF model, and adapters in peft's own format.

`save_merged_hf` folds LoRA into the base and writes an ordinary HF directory through the same
writer as `itjax convert --to_hf`. `save_peft_adapter` writes `adapter_config.json` +
`adapter_model.safetensors` that `peft.PeftModel.from_pretrained(<transformers model of the base>,
DIR)` loads with the same logits: LoRA for Llama-family decoders and T5, prefix tuning for
Llama-family decoders. Tensor names reuse the itjax <-> HF parameter mapping of `hf_llama` / `hf_t5`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from itjax.errors import UserError
from itjax.models import hf_llama, hf_t5
from itjax.models.config_io import ModelConfig
from itjax.models.decoder import DecoderConfig, apply_rope, rope_inv_freq
from itjax.models.hf_llama import _NP_DTYPES
from itjax.models.t5 import T5Config
from itjax.peft.lora import merge_lora
from itjax.peft.method import flatten, lora_kernels, with_peft

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_LAYER = re.compile(r"^(?:(encoder|decoder)/)?layers(?:_(\d+))?/(.+)$")


def save_merged_hf(cfg: ModelConfig, params: Mapping[str, Any], path: str, model_type: str | None = None,
                   dtype: str = "float32") -> None:
  """Writes the LoRA-merged model as an HF directory (transformers loads it as a plain model)."""
  merged = jax.tree_util.tree_map(np.asarray, jax.device_get(merge_lora(params, cfg.peft)))
  base_cfg = with_peft(cfg, None)
  if isinstance(cfg, T5Config):
    hf_t5.save_hf_dir(base_cfg, merged, path, dtype=dtype)
  else:
    hf_llama.save_hf_dir(base_cfg, merged, path, model_type=model_type or "llama", dtype=dtype)


def unstack_layers(flat: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """'/'-paths with scanned `layers/...` leaves [num_layers, ...] split into `layers_<i>/...` (numpy)."""
  out = {}
  for path, value in flat.items():
    value = np.asarray(jax.device_get(value))
    parts = path.split("/")
    if "layers" in parts:
      i = parts.index("layers")
      for layer in range(value.shape[0]):
        out["/".join([*parts[:i], f"layers_{layer}", *parts[i + 1:]])] = value[layer]
    else:
      out[path] = value
  return out


def hf_module_names(cfg: ModelConfig) -> dict[str, str]:
  """itjax kernel path (`layers_<i>/...`, unscanned) -> HF module name, for every kernel LoRA can adapt."""
  if isinstance(cfg, T5Config):
    table = {}
    for stack in ("encoder", "decoder"):
      n = cfg.num_encoder_layers if stack == "encoder" else cfg.num_decoder_layers
      for ours, theirs, _ in hf_t5._layer_names(cfg, stack):
        table.update({f"{stack}/layers_{i}/{ours}": f"{stack}.block.{i}.{theirs}" for i in range(n)})
  else:
    ours, theirs = hf_llama._layer_shapes(cfg)
    pairs = dict(zip(ours, theirs, strict=True))
    table = {f"layers_{i}/{o}": f"model.layers.{i}.{t}" for i in range(cfg.num_layers) for o, t in pairs.items()}
  return {k: v.removesuffix(".weight") for k, v in table.items() if v.endswith(".weight")}


def _unscanned_kernels(cfg: ModelConfig) -> list[str]:
  out = set()
  for path in lora_kernels(cfg):
    m = _LAYER.match(path)
    stack = f"{m.group(1)}/" if m.group(1) else ""
    n = cfg.num_layers if isinstance(cfg, DecoderConfig) else getattr(cfg, f"num_{m.group(1)}_layers")
    out.update(f"{stack}layers_{i}/{m.group(3)}" for i in (range(n) if m.group(2) is None else [int(m.group(2))]))
  return sorted(out)


def _lora_tensors(cfg: ModelConfig, flat: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """peft's LoRA tensors (`base_model.model.<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r]) and
  target_modules: short names when they select exactly the adapted modules, full module names otherwise."""
  names = hf_module_names(cfg)
  tensors, targeted = {}, []
  for key, a in flat.items():
    if not key.endswith("_lora_a"):
      continue
    kernel = key.removesuffix("_lora_a")
    b = flat[kernel + "_lora_b"]
    module = names[kernel]
    rank = a.shape[-1]
    tensors[f"base_model.model.{module}.lora_A.weight"] = a.reshape(-1, rank).T
    tensors[f"base_model.model.{module}.lora_B.weight"] = b.reshape(rank, -1).T
    targeted.append(module)
  every = [names[k] for k in _unscanned_kernels(cfg)]
  short = sorted({m.rsplit(".", 1)[-1] for m in targeted})
  if sorted(m for m in every if m.rsplit(".", 1)[-1] in short) == sorted(targeted):
    return tensors, short
  return tensors, sorted(targeted)


def _prefix_tensors(cfg: DecoderConfig, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """peft's `prompt_embeddings` [tokens, layers * 2 * kv_heads * head_dim] (key, value per layer).

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


def save_peft_adapter(cfg: ModelConfig, params: Mapping[str, Any], path: str,
                      base_model_name_or_path: str | None = None, dtype: str = "float32") -> None:
  """Writes peft's adapter_config.json + adapter_model.safetensors for a PEFT model's trainable variables.

  `params` may be the combined tree or the trainable one; `base_model_name_or_path` is recorded for
  `AutoPeftModel*` (e.g. the HF directory exported from the same base).
  """
  peft = cfg.peft
  if peft is None or not peft.methods:
    raise UserError("not a PEFT model: its config has no peft method, so there is no adapter to export")
  if dtype not in _NP_DTYPES:
    raise UserError(f"unknown export dtype {dtype!r}; expected one of {sorted(_NP_DTYPES)}")
  is_t5 = isinstance(cfg, T5Config)
  flat = unstack_layers(flatten(params))
  config: dict[str, Any] = {"task_type": "SEQ_2_SEQ_LM" if is_t5 else "CAUSAL_LM",
                            "base_model_name_or_path": base_model_name_or_path, "revision": None,
                            "inference_mode": True}
  if peft.methods == ("lora",):
    tensors, targets = _lora_tensors(cfg, flat)
    config.update(peft_type="LORA", r=peft.lora_rank, lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout,
                  target_modules=targets, bias="none", fan_in_fan_out=False, use_rslora=False, use_dora=False,
                  init_lora_weights=True, modules_to_save=None, layers_to_transform=None, layers_pattern=None,
                  rank_pattern={}, alpha_pattern={})
  elif peft.methods == ("prefix",) and not is_t5:
    tensors = _prefix_tensors(cfg, flat)
    config.update(peft_type="PREFIX_TUNING", num_virtual_tokens=peft.prefix_tokens, num_layers=cfg.num_layers,
                  token_dim=cfg.num_heads * cfg.head_dim, num_attention_heads=cfg.num_heads,
                  num_transformer_submodules=1, prefix_projection=False, encoder_hidden_size=cfg.emb_dim)
  else:
    raise UserError(f"peft's format has no equivalent of {'+'.join(peft.methods)} on "
                    f"{'T5' if is_t5 else 'this model'}: it exports LoRA (decoder or T5) and prefix tuning "
                    "(decoder); merge LoRA with `itjax convert --to_hf`, keep adapters as itjax checkpoints")
  os.makedirs(path, exist_ok=True)
  np_dtype = _NP_DTYPES[dtype]
  save_file({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()},
            os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
  with open(os.path.join(path, CONFIG_NAME), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")


def export_peft(checkpoint: str, path: str, base_model_name_or_path: str | None = None,
                dtype: str = "float32") -> None:
  """`itjax convert --to_peft`: a PEFT run's checkpoint -> peft adapter directory (the base is not read)."""
  from itjax.models.config_io import load_model_config
  from itjax.peft.state import load_trainable
  from itjax.train import partitioning

  cfg = load_model_config(checkpoint)
  if cfg.peft is None:
    raise UserError(f"{checkpoint}: not a PEFT run (its model_config.json has no peft method); export it with "
                    "--to_hf")
  trainable = load_trainable(checkpoint, cfg, partitioning.create_mesh(), partitioning.logical_axis_rules())
  save_peft_adapter(cfg, trainable, path, base_model_name_or_path, dtype)
  print(f"exported the {'+'.join(cfg.peft.methods)} adapter of {checkpoint} -> {path} ({CONFIG_NAME}, "
        f"{WEIGHTS_NAME})")
