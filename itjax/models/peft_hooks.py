"""The one place where parameter-efficient tuning (PEFT) enters the models: three small hooks, and the
split of a PEFT model's params into the frozen base and the trainable variables.

Both model families call the same hooks at the same kinds of points, driven by their config's `peft`
field (a `PeftConfig`; None turns every hook into the identity, so params and outputs are exactly
those of the plain model):

- `lora(module, kernel_name, n_in, peft)(x, y)` after every attention (q/k/v/o) and MLP (wi/wo)
  projection `y = x . kernel`: adds `(alpha / r) * (dropout(x) . A) . B` when the kernel's path
  matches one of `peft.lora_targets`, with A `[*in_dims, r]` and B `[r, *out_dims]` (multi-dim einsum
  kernels keep their dims: q's A is `[embed, r]`, B `[r, heads, head_dim]`).
- `prefix(module, k, v, mask, bias, head_axis, peft)` in every attention before the scores: prepends
  `peft.prefix_tokens` trainable keys/values (already rotated: like a KV cache, as HF/peft do), visible
  to every query that sees anything.
- `adapter(module, site, y, peft)` on each attention / MLP block output before the residual add:
  `y + up(act(down(y)))` (Houlsby bottleneck; `up` starts at zero).

Every attention and MLP kernel is read through `kernel(module, name, init, shape, dtype)`: the param as
`module.param` gives it, or, where the frozen base stores it quantized (QLoRA: `peft.base_quant`, see
`itjax.models.quant`), its values dequantized right there, for that matmul alone.

PEFT variables live in the ordinary "params" collection next to the weights they adapt, under
names that `PEFT_LEAF` recognizes (`q_kernel_lora_a`, `prefix_key`, `attn_adapter_up`, ...), so a
combined (frozen base + trainable) tree flows unchanged through every `model.apply` (training,
generation, scoring), scanned layers stack them like any param, and logical axes shard them.
They are created by `model.init` only; at apply a hook uses them when present, else does nothing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from itjax.models import quant

PEFT_LEAF = re.compile(r"(_lora_[ab]|^prefix_(key|value)|_adapter_(down|up)(_bias)?)$")
ADAPTER_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=True), "silu": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """Which PEFT methods a model carries and their hyper-parameters (several may be combined).

  lora_rank > 0 turns LoRA on for kernels whose '/'-joined param path matches a `lora_targets` regex
  (re.search); prefix_tokens > 0 adds trainable key/value prefixes to every attention;
  adapter_dim > 0 adds bottleneck adapters after every attention and MLP block. `base_dtype` is the
  storage dtype of the frozen base weights while tuning (e.g. "bfloat16"); `base_quant` ("int8" | "nf4")
  stores the frozen attention and MLP kernels quantized instead (QLoRA; NF4 in blocks of
  `quant_block_size` along the input dim), the other frozen weights staying in `base_dtype`.
  """

  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: tuple[str, ...] = ()
  prefix_tokens: int = 0
  prefix_init_scale: float = 0.02
  adapter_dim: int = 0
  adapter_activation: str = "relu"
  base_dtype: str = "float32"
  base_quant: str | None = None
  quant_block_size: int = 64

  def __post_init__(self):
    if isinstance(self.lora_targets, str):
      object.__setattr__(self, "lora_targets", (self.lora_targets,))
    else:
      object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  @property
  def methods(self) -> tuple[str, ...]:
    """The enabled methods, in a fixed order: lora, prefix, adapters."""
    on = (("lora", self.lora_rank > 0), ("prefix", self.prefix_tokens > 0), ("adapters", self.adapter_dim > 0))
    return tuple(name for name, enabled in on if enabled)


def as_peft_config(value: PeftConfig | dict | None) -> PeftConfig | None:
  """A PeftConfig from what a model config holds (a dict when read back from model_config.json)."""
  return PeftConfig(**value) if isinstance(value, dict) else value


def is_peft_leaf(path: str) -> bool:
  """Whether a '/'-joined param path names a PEFT variable (trainable under PEFT) rather than a base weight."""
  return bool(PEFT_LEAF.search(path.rsplit("/", 1)[-1]))


Params = dict[str, Any]


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """'/'-joined path -> leaf."""
  return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> Params:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def with_peft(cfg: Any, peft: PeftConfig | None) -> Any:
  """The model config with `peft` set (None: the plain model)."""
  return dataclasses.replace(cfg, peft=peft)


def split(params: Mapping[str, Any]) -> tuple[Params, Params]:
  """(frozen base, trainable PEFT variables) of a PEFT model's params (boxed or not)."""
  flat = flatten(params)
  base = {k: v for k, v in flat.items() if not is_peft_leaf(k)}
  trainable = {k: v for k, v in flat.items() if is_peft_leaf(k)}
  return unflatten(base), unflatten(trainable)


def combine(base: Mapping[str, Any], trainable: Mapping[str, Any]) -> Params:
  """The full params tree that a PEFT model applies: the base with the trainable variables added."""
  return unflatten({**flatten(base), **flatten(trainable)})


def _path(module: nn.Module, name: str) -> str:
  return "/".join((*module.path, name))


def _axes(module: nn.Module, name: str, ndim: int) -> tuple:
  """Logical axis names of an existing param (known at init, where params are still boxed)."""
  names = getattr(module.get_variable("params", name), "names", None)
  return tuple(names) if names is not None else (None,) * ndim


def _wants(module: nn.Module, name: str, enabled: bool) -> bool:
  """Use `name` if present; create it only while initializing a model whose config enables it."""
  return module.has_variable("params", name) or (enabled and module.is_initializing())


def lora(module: nn.Module, kernel_name: str, n_in: int, peft: PeftConfig | None) -> Callable:
  """`(x, y) -> y + scale * (dropout(x) . A) . B` for a targeted kernel (`n_in` contracted dims); else `y`.

  Dropout (rate `peft.lora_dropout`, on the LoRA branch's input as in peft) acts only when the
  model is applied with a "dropout" RNG, i.e. in training steps.
  """
  identity = lambda x, y: y
  if peft is None or not peft.lora_rank:
    return identity
  a_name, b_name = f"{kernel_name}_lora_a", f"{kernel_name}_lora_b"
  targeted = any(re.search(p, _path(module, kernel_name)) for p in peft.lora_targets)
  if not _wants(module, a_name, targeted):
    return identity
  if module.is_initializing() and not module.has_variable("params", a_name):
    kernel = module.get_variable("params", kernel_name)
    shape = jnp.shape(nn.meta.unbox(kernel))
    axes = _axes(module, kernel_name, len(shape))
    in_shape, out_shape = shape[:n_in], shape[n_in:]
    fan_in = 1
    for d in in_shape:
      fan_in *= d
    bound = fan_in ** -0.5  # peft's kaiming_uniform(a=sqrt(5)) on A: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    a_init = lambda rng, s, dt: jax.random.uniform(rng, s, dt, -bound, bound)
    module.param(a_name, nn.with_logical_partitioning(a_init, (*axes[:n_in], None)), (*in_shape, peft.lora_rank),
                 jnp.float32)
    module.param(b_name, nn.with_logical_partitioning(nn.initializers.zeros, (None, *axes[n_in:])),
                 (peft.lora_rank, *out_shape), jnp.float32)
  a = module.get_variable("params", a_name)
  b = module.get_variable("params", b_name)
  a, b = nn.meta.unbox(a), nn.meta.unbox(b)
  rng = None
  if peft.lora_dropout > 0 and module.has_rng("dropout"):
    rng = module.make_rng("dropout")

  def apply(x, y):
    if rng is not None:
      keep = jax.random.bernoulli(rng, 1.0 - peft.lora_dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - peft.lora_dropout), jnp.zeros_like(x))
    h = jnp.tensordot(x, a.astype(x.dtype), axes=n_in)
    delta = jnp.tensordot(h, b.astype(x.dtype), axes=1)
    return y + (peft.lora_scale * delta).astype(y.dtype)

  return apply


def kernel(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  """`module.param(name, init, shape, dtype)`, or the dequantized values (in `dtype`) of a quantized frozen kernel:
  dequantized where its matmul reads it, so no more than the kernels in use exist in float at once."""
  if module.has_variable("params", name):
    value = module.get_variable("params", name)
    if quant.is_quantized(value):
      w = quant.dequantize(value, dtype)
      if w.shape != tuple(shape):
        raise ValueError(f"{_path(module, name)}: quantized kernel of shape {w.shape}; the model expects {shape}")
      return w
  return module.param(name, init, shape, dtype)


def has_prefix(peft: PeftConfig | None) -> bool:
  """Whether `prefix` may prepend keys (then attention needs its dense mask and bias)."""
  return peft is not None and peft.prefix_tokens > 0


def prefix(module: nn.Module, k: jax.Array, v: jax.Array, mask: jax.Array, bias: jax.Array | None, head_axis: str,
           peft: PeftConfig | None) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
  """(k, v, mask, bias) with `peft.prefix_tokens` trainable keys/values prepended along the key axis.

  k, v: [batch, keys, heads, head_dim]; mask: [batch, 1|heads, queries, keys] (True = may attend);
  bias: None or broadcastable to [batch, heads, queries, keys]. A query that may attend to any key
  (a real token, not padding) also sees every prefix position; prefix positions get zero bias.
  """
  if peft is None or not peft.prefix_tokens:
    return k, v, mask, bias
  if not _wants(module, "prefix_key", True):
    return k, v, mask, bias
  shape = (peft.prefix_tokens, k.shape[2], k.shape[3])
  init = nn.with_logical_partitioning(nn.initializers.normal(peft.prefix_init_scale), (None, head_axis, "kv"))
  pk = module.param("prefix_key", init, shape, jnp.float32)
  pv = module.param("prefix_value", init, shape, jnp.float32)
  b = k.shape[0]
  k = jnp.concatenate([jnp.broadcast_to(pk.astype(k.dtype), (b, *shape)), k], axis=1)
  v = jnp.concatenate([jnp.broadcast_to(pv.astype(v.dtype), (b, *shape)), v], axis=1)
  sees = jnp.any(mask, axis=-1, keepdims=True)
  mask = jnp.concatenate([jnp.broadcast_to(sees, (*mask.shape[:-1], peft.prefix_tokens)), mask], axis=-1)
  if bias is not None:
    bias = jnp.concatenate([jnp.zeros((*bias.shape[:-1], peft.prefix_tokens), bias.dtype), bias], axis=-1)
  return k, v, mask, bias


def adapter(module: nn.Module, site: str, y: jax.Array, peft: PeftConfig | None) -> jax.Array:
  """`y + up(act(down(y)))` for a block output y [..., embed] (params `<site>_adapter_*`); else `y`."""
  if peft is None or not peft.adapter_dim:
    return y
  name = f"{site}_adapter"
  if not _wants(module, f"{name}_down", True):
    return y
  e, m = y.shape[-1], peft.adapter_dim
  param = lambda suffix, init, shape, axes: module.param(f"{name}_{suffix}", nn.with_logical_partitioning(init, axes),
                                                         shape, jnp.float32).astype(y.dtype)
  down = param("down", nn.initializers.normal(e ** -0.5), (e, m), ("embed", None))
  down_bias = param("down_bias", nn.initializers.zeros, (m,), (None,))
  up = param("up", nn.initializers.zeros, (m, e), (None, "embed"))
  up_bias = param("up_bias", nn.initializers.zeros, (e,), ("embed",))
  h = ADAPTER_ACTIVATIONS[peft.adapter_activation](y @ down + down_bias)
  return y + (h @ up + up_bias)
