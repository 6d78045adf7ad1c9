"""The T5 family: encoder-decoders (T5 v1.1, Flan-T5 and original T5 checkpoints)."""

from __future__ import annotations

from itjax.models import hf_t5
from itjax.models.family import Family, HFMapping
from itjax.models.interface import EncoderDecoder
from itjax.models.t5 import T5, T5Config

FAMILY = Family(
    name="t5", config_cls=T5Config, module_cls=T5, interface_cls=EncoderDecoder,
    hf=HFMapping(model_types=hf_t5.MODEL_TYPES, read_dir=hf_t5.load_hf_dir, write_dir=hf_t5.save_hf_dir,
                 module_names=hf_t5.module_names, peft_task_type="SEQ_2_SEQ_LM"),
    init_shapes=((1, 8), (1, 8)))
