"""Parameter-efficient tuning: LoRA, prefix tuning and bottleneck adapters for every itjax model.

Select a method in gin (`train.peft = @lora()`, `@prefix_tuning()` or `@adapters()`); it becomes the
model config's `peft` field, which the shared hooks in `itjax.models.peft_hooks` read. Training
keeps only the PEFT variables trainable (`peft_hooks.split` / `combine`), LoRA merges into the
base weights (`lora.merge_lora`) and exports in peft's adapter format (`itjax.convert.peft_adapter`).
"""

from itjax.models.peft_hooks import PeftConfig, combine, is_peft_leaf, split, with_peft
from itjax.peft.adapters import adapters
from itjax.peft.lora import lora, merge_lora
from itjax.peft.method import trainable_mask
from itjax.peft.prefix import prefix_tuning

__all__ = ["PeftConfig", "adapters", "combine", "is_peft_leaf", "lora", "merge_lora", "prefix_tuning", "split",
           "trainable_mask", "with_peft"]
