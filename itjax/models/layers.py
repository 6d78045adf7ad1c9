"""Building blocks shared by the model families (norms, MLPs, initializers)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from itjax.models import peft_hooks, remat

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(name: str):
  try:
    return _DTYPES[name]
  except KeyError:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


class Numerics:
  """The jnp dtypes of a model config's `dtype` (compute) and `param_dtype` (storage) names."""

  dtype: str
  param_dtype: str

  @property
  def compute_dtype(self):
    return resolve_dtype(self.dtype)

  @property
  def params_dtype(self):
    return resolve_dtype(self.param_dtype)


def vocab_logits(x: jax.Array, weight: jax.Array, *, tied: bool, dtype) -> jax.Array:
  """Hidden states [..., embed] -> float32 logits [..., vocab]: x @ embedding.T when `tied`, else x @ lm_head
  (computed in `dtype`). One function for the models' heads and the chunked loss, so both give the same logits."""
  logits = jnp.einsum("...e,ve->...v" if tied else "...e,ev->...v", x, weight.astype(dtype))
  return logits.astype(jnp.float32)


def dense_init(fan_in: int):
  """Normal(0, 1/sqrt(fan_in)): variance scaling that ignores the kernel's extra dims."""
  return nn.initializers.normal(fan_in ** -0.5)


class RMSNorm(nn.Module):
  """Root-mean-square norm (T5 layer norm, Llama RMSNorm); statistics in fp32."""

  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y.astype(self.dtype) * scale.astype(self.dtype))


_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),  # T5 v1.1 "gelu_new"
    "relu": jax.nn.relu,
}


class MlpBlock(nn.Module):
  """Feed-forward block; gated (SwiGLU / GeGLU: act(x W0) * (x W1)) or plain.

  `dropout_rate` drops the hidden activations before the output projection (after the gating
  product), where HF T5 applies it; off by default and whenever `deterministic`.
  """

  emb_dim: int
  mlp_dim: int
  activation: str = "silu"
  gated: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  peft: peft_hooks.PeftConfig | None = None  # LoRA on wi_0 / wi_1 / wo (see itjax.models.peft_hooks)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    def kernel(name, shape, axes, fan_in):
      return peft_hooks.kernel(self, name, nn.with_logical_partitioning(dense_init(fan_in), axes), shape,
                               self.param_dtype).astype(self.dtype)

    act = _ACTIVATIONS[self.activation]
    wi_0 = kernel("wi_0", (self.emb_dim, self.mlp_dim), ("embed", "mlp"), self.emb_dim)
    h = act(peft_hooks.lora(self, "wi_0", 1, self.peft)(x, x @ wi_0))
    if self.gated:
      wi_1 = kernel("wi_1", (self.emb_dim, self.mlp_dim), ("embed", "mlp"), self.emb_dim)
      h = h * peft_hooks.lora(self, "wi_1", 1, self.peft)(x, x @ wi_1)
    h = remat.tag(nn.with_logical_constraint(h, ("batch", "length", "mlp")), remat.MLP_HIDDEN)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    wo = kernel("wo", (self.mlp_dim, self.emb_dim), ("mlp", "embed"), self.mlp_dim)
    return peft_hooks.lora(self, "wo", 1, self.peft)(h, h @ wo)
