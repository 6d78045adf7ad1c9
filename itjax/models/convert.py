"""`itjax convert`: Hugging Face directory <-> itjax model directory.

An imported model is an ordinary itjax MODEL_DIR (model_config.json plus an
Orbax checkpoint at step 0), usable as INITIAL_CHECKPOINT_PATH or by eval.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from itjax.models import hf_llama
from itjax.models.config_io import load_model_config, save_model_config


def import_hf(hf_dir: str, output: str) -> None:
  from itjax.train.checkpoints import Checkpointer

  cfg, params = hf_llama.load_hf_dir(hf_dir)
  os.makedirs(output, exist_ok=True)
  save_model_config(output, cfg)
  ckpt = Checkpointer(output, period=1, keep=None, async_save=False)
  ckpt.save(0, {"params": jax.tree_util.tree_map(jnp.asarray, params)}, {"source": os.path.abspath(hf_dir)},
            force=True)
  ckpt.wait()
  ckpt.close()
  n = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  print(f"imported {hf_dir} ({n:,} parameters) -> {output}")


def export_hf(checkpoint: str, hf_dir: str, model_type: str = "llama", dtype: str = "float32") -> None:
  from itjax.train import partitioning
  from itjax.train.checkpoints import load_model

  cfg = load_model_config(checkpoint)
  mesh = partitioning.create_mesh()
  _, params = load_model(checkpoint, mesh, partitioning.logical_axis_rules())
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
  hf_llama.save_hf_dir(cfg, params, hf_dir, model_type=model_type, dtype=dtype)
  print(f"exported {checkpoint} -> {hf_dir} (model_type={model_type}, dtype={dtype})")
