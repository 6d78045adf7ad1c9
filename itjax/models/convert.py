"""`itjax convert`: Hugging Face directory <-> itjax model directory.

An imported model is an ordinary itjax MODEL_DIR (model_config.json plus an
Orbax checkpoint at step 0), usable as INITIAL_CHECKPOINT_PATH or by eval.
The architecture follows HF `config.json`'s `model_type`: llama / mistral /
qwen2 become a decoder-only model, t5 a T5 encoder-decoder; export writes
whichever the model directory holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from itjax.data.vocab import copy_tokenizer_files
from itjax.errors import UserError
from itjax.models import hf_llama, hf_t5
from itjax.models.config_io import build_model, example_inputs, find_model_dir, load_model_config, save_model_config
from itjax.models.t5 import T5Config

T5_MODEL_TYPES = ("t5",)


def hf_model_type(hf_dir: str) -> str:
  """`model_type` from an HF directory's config.json (UserError if absent or unreadable)."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isdir(hf_dir):
    raise UserError(f"{hf_dir}: not a directory (expected a Hugging Face model directory)")
  if not os.path.exists(path):
    raise UserError(f"{path} not found (a Hugging Face model directory needs config.json)")
  try:
    with open(path) as f:
      return str(json.load(f).get("model_type"))
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: unreadable ({e})") from None


def import_hf(hf_dir: str, output: str) -> None:
  """Reads an HF Llama-family or T5 directory and writes an itjax MODEL_DIR (config + step-0 checkpoint)."""
  from itjax.train.checkpoints import Checkpointer

  model_type = hf_model_type(hf_dir)
  if model_type in hf_llama.ARCHITECTURES:
    cfg, params = hf_llama.load_hf_dir(hf_dir)
  elif model_type in T5_MODEL_TYPES:
    cfg, params = hf_t5.load_hf_dir(hf_dir)
  else:
    supported = ", ".join(sorted([*hf_llama.ARCHITECTURES, *T5_MODEL_TYPES]))
    raise UserError(f"{hf_dir}: unsupported model_type {model_type!r}; supported: {supported}")
  os.makedirs(output, exist_ok=True)
  save_model_config(output, cfg)
  ckpt = Checkpointer(output, period=1, keep=None, async_save=False)
  ckpt.save(0, {"params": jax.tree_util.tree_map(jnp.asarray, params)}, {"source": os.path.abspath(hf_dir)},
            force=True)
  ckpt.wait()
  ckpt.close()
  copied = copy_tokenizer_files(hf_dir, output)
  n = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  tok = f"; tokenizer files: {', '.join(copied)}" if copied else "; no tokenizer files found"
  print(f"imported {hf_dir} ({model_type}, {n:,} parameters) -> {output}{tok}")


def load_params(checkpoint: str, cfg: Any, mesh, rules) -> Any:
  """Params of any itjax architecture from a MODEL_DIR / checkpoint, sharded on `mesh` by logical `rules`."""
  from itjax.train.checkpoints import restore_params

  if cfg.peft is not None:  # a PEFT run: its trainable variables on top of the base its checkpoint names
    from itjax.peft.state import load_peft_params

    return load_peft_params(checkpoint, cfg, mesh, rules)
  model = build_model(cfg)
  boxed = jax.eval_shape(lambda r: model.init(r, *example_inputs(cfg))["params"], jax.random.key(0))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                    nn.unbox(boxed), shardings)
  return restore_params(checkpoint, abstract)


def export_hf(checkpoint: str, hf_dir: str, model_type: str | None = None, dtype: str = "float32") -> None:
  """Writes an HF directory from an itjax MODEL_DIR / checkpoint.

  `model_type` picks the HF family of a decoder-only model (llama, mistral, qwen2; default llama). A T5
  model is always exported as t5; "llama" is accepted there too, since it is the CLI's default.
  A PEFT run (LoRA) is exported with its updates merged into the base weights.
  """
  from itjax.train import partitioning

  cfg = load_model_config(checkpoint)
  is_t5 = isinstance(cfg, T5Config)
  if is_t5 and model_type not in (None, "t5", "llama"):
    raise UserError(f"{checkpoint} holds a T5 model; it exports only as model_type t5, not {model_type!r}")
  if not is_t5 and model_type == "t5":
    raise UserError(f"{checkpoint} holds a decoder-only model; export it as llama, mistral or qwen2")
  mesh = partitioning.create_mesh()
  params = load_params(checkpoint, cfg, mesh, partitioning.logical_axis_rules())
  if cfg.peft is not None:  # a PEFT run exports merged: LoRA folds into the base (prefixes, adapters refuse)
    from itjax.peft.lora import merge_lora

    params, cfg = merge_lora(params, cfg.peft), dataclasses.replace(cfg, peft=None)
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
  if is_t5:
    model_type = "t5"
    hf_t5.save_hf_dir(cfg, params, hf_dir, dtype=dtype)
  else:
    model_type = model_type or "llama"
    hf_llama.save_hf_dir(cfg, params, hf_dir, model_type=model_type, dtype=dtype)
  copy_tokenizer_files(find_model_dir(checkpoint), hf_dir)
  print(f"exported {checkpoint} -> {hf_dir} (model_type={model_type}, dtype={dtype})")
