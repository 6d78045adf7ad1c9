"""`itjax convert --to_peft`: PEFT runs in peft's own adapter format, and LoRA merged into an HF model.

`save_merged_hf` folds LoRA into the base and writes an ordinary HF directory through the family's
HF writer (as `itjax convert --to_hf`). `save_peft_adapter` writes `adapter_config.json` +
`adapter_model.safetensors` that `peft.PeftModel.from_pretrained(<transformers model of the base>,
DIR)` loads with the same logits: LoRA for every family, prefix tuning where the family's HF mapping
has peft's prefix format (the decoder family). Module names come from the family's HF mapping.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from safetensors.numpy import save_file

from itjax.core.mesh import create_mesh, logical_axis_rules
from itjax.core.model_dir import ModelDir
from itjax.errors import UserError
from itjax.models.families import family_of
from itjax.models.hf_io import NP_DTYPES
from itjax.models.peft_hooks import flatten, with_peft
from itjax.peft.lora import merge_lora
from itjax.peft.method import lora_kernels

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def save_merged_hf(cfg: Any, params: Mapping[str, Any], path: str, model_type: str | None = None,
                   dtype: str = "float32") -> None:
  """Writes the LoRA-merged model as an HF directory (transformers loads it as a plain model)."""
  merged = jax.tree_util.tree_map(np.asarray, jax.device_get(merge_lora(params, cfg.peft)))
  hf = family_of(cfg).hf
  hf.write_dir(with_peft(cfg, None), merged, path, model_type=model_type or hf.model_types[0], dtype=dtype)


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


def _unscanned_kernels(cfg: Any) -> list[str]:
  """Every kernel LoRA can adapt, as unscanned paths (`layers_<i>/...`)."""
  return lora_kernels(dataclasses.replace(cfg, scan_layers=False))


def _lora_tensors(cfg: Any, flat: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """peft's LoRA tensors (`base_model.model.<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r]) and
  target_modules: short names when they select exactly the adapted modules, full module names otherwise."""
  names = family_of(cfg).hf.module_names(cfg)
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


def save_peft_adapter(cfg: Any, params: Mapping[str, Any], path: str,
                      base_model_name_or_path: str | None = None, dtype: str = "float32") -> None:
  """Writes peft's adapter_config.json + adapter_model.safetensors for a PEFT model's trainable variables.

  `params` may be the combined tree or the trainable one; `base_model_name_or_path` is recorded for
  `AutoPeftModel*` (e.g. the HF directory exported from the same base).
  """
  peft = cfg.peft
  if peft is None or not peft.methods:
    raise UserError("not a PEFT model: its config has no peft method, so there is no adapter to export")
  if dtype not in NP_DTYPES:
    raise UserError(f"unknown export dtype {dtype!r}; expected one of {sorted(NP_DTYPES)}")
  family = family_of(cfg)
  flat = unstack_layers(flatten(params))
  config: dict[str, Any] = {"task_type": family.hf.peft_task_type,
                            "base_model_name_or_path": base_model_name_or_path, "revision": None,
                            "inference_mode": True}
  if peft.methods == ("lora",):
    tensors, targets = _lora_tensors(cfg, flat)
    config.update(peft_type="LORA", r=peft.lora_rank, lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout,
                  target_modules=targets, bias="none", fan_in_fan_out=False, use_rslora=False, use_dora=False,
                  init_lora_weights=True, modules_to_save=None, layers_to_transform=None, layers_pattern=None,
                  rank_pattern={}, alpha_pattern={})
  elif peft.methods == ("prefix",) and family.hf.prefix_tensors is not None:
    tensors = family.hf.prefix_tensors(cfg, flat)
    config.update(peft_type="PREFIX_TUNING", **family.hf.prefix_config(cfg))
  else:
    raise UserError(f"peft's format has no equivalent of {'+'.join(peft.methods)} on the {family.name} family: "
                    "it exports LoRA (every family) and prefix tuning (decoder); merge LoRA with "
                    "`itjax convert --to_hf`, keep adapters as itjax checkpoints")
  os.makedirs(path, exist_ok=True)
  np_dtype = NP_DTYPES[dtype]
  save_file({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()},
            os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
  with open(os.path.join(path, CONFIG_NAME), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")


def export_peft(checkpoint: str, path: str, base_model_name_or_path: str | None = None,
                dtype: str = "float32") -> None:
  """`itjax convert --to_peft`: a PEFT run's checkpoint -> peft adapter directory (the base is not read)."""
  mdir = ModelDir.open(checkpoint)
  cfg = mdir.config
  if cfg.peft is None:
    raise UserError(f"{checkpoint}: not a PEFT run (its model_config.json has no peft method); export it with "
                    "--to_hf")
  trainable = mdir.trainable().load_trainable(mdir.require_step_dir(), create_mesh(), logical_axis_rules())
  save_peft_adapter(cfg, trainable, path, base_model_name_or_path, dtype)
  print(f"exported the {'+'.join(cfg.peft.methods)} adapter of {checkpoint} -> {path} ({CONFIG_NAME}, "
        f"{WEIGHTS_NAME})")
