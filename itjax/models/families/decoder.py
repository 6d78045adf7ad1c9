"""The decoder family: Llama-style decoder-only transformers (Llama, Mistral, Qwen2 checkpoints)."""

from __future__ import annotations

import dataclasses

from itjax.models import hf_decoder
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.family import Family, HFMapping
from itjax.models.interface import DecoderOnly


def _to_json(cfg: DecoderConfig) -> dict:
  d = dataclasses.asdict(cfg)
  d["rope_scaling"] = dict(cfg.rope_scaling) if cfg.rope_scaling else None  # stored as sorted pairs in the config
  return d


FAMILY = Family(
    name="decoder", config_cls=DecoderConfig, module_cls=Decoder, interface_cls=DecoderOnly,
    hf=HFMapping(model_types=hf_decoder.MODEL_TYPES, read_dir=hf_decoder.load_hf_dir, write_dir=hf_decoder.save_hf_dir,
                 module_names=hf_decoder.module_names, peft_task_type="CAUSAL_LM",
                 prefix_tensors=hf_decoder.prefix_tensors, prefix_config=hf_decoder.prefix_config),
    init_shapes=((1, 8),), config_to_json=_to_json)
