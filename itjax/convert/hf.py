"""`itjax convert --from_hf / --to_hf`: Hugging Face directory <-> itjax model directory.

An imported model is an ordinary itjax MODEL_DIR (model_config.json plus an Orbax checkpoint at
step 0, and the HF tokenizer files), usable as INITIAL_CHECKPOINT_PATH or by eval. The family
follows HF `config.json`'s `model_type` (llama / mistral / qwen2: the decoder family; t5: T5);
export writes whichever family the model directory holds. A LoRA run exports merged.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from itjax.core.checkpoints import Checkpointer
from itjax.core.mesh import create_mesh, logical_axis_rules
from itjax.core.model_dir import ModelDir, save_model_config
from itjax.core.tokenizer import copy_tokenizer_files
from itjax.errors import UserError, make_dirs
from itjax.models.families import family_for_hf
from itjax.models.hf_io import read_config
from itjax.models.peft_hooks import with_peft
from itjax.peft.lora import merge_lora


def import_hf(hf_dir: str, output: str) -> None:
  """Reads an HF directory of any known family and writes an itjax MODEL_DIR (config + step-0 checkpoint)."""
  model_type = str(read_config(hf_dir).get("model_type"))
  family = family_for_hf(model_type, hf_dir)
  cfg, params = family.hf.read_dir(hf_dir)
  make_dirs(output, "--output")
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


def export_hf(checkpoint: str, hf_dir: str, model_type: str | None = None, dtype: str = "float32") -> None:
  """Writes an HF directory from an itjax MODEL_DIR / checkpoint.

  `model_type` picks the HF member of the family (decoder: llama, mistral, qwen2; default: the family's
  first). "llama", the CLI's historical default, is accepted for any family. A PEFT run (LoRA) is
  exported with its updates merged into the base weights.
  """
  mdir = ModelDir.open(checkpoint)
  family = mdir.family
  types = family.hf.model_types
  if model_type in (None, "llama") and "llama" not in types:
    model_type = types[0]
  model_type = model_type or types[0]
  if model_type not in types:
    raise UserError(f"{checkpoint} holds a {family.name} model ({type(mdir.config).__name__}); it exports as "
                    f"model_type {', '.join(types)}, not {model_type!r}")
  loaded = mdir.load(create_mesh(), logical_axis_rules())
  params, cfg = loaded.params, mdir.config
  if cfg.peft is not None:  # LoRA folds into the base (prefixes and adapters refuse: no weight to fold into)
    params, cfg = merge_lora(params, cfg.peft), with_peft(cfg, None)
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
  family.hf.write_dir(cfg, params, hf_dir, model_type=model_type, dtype=dtype)
  copy_tokenizer_files(mdir.root, hf_dir)
  print(f"exported {checkpoint} -> {hf_dir} (model_type={model_type}, dtype={dtype})")
