"""Decoder-only transformer of the Llama family (Llama, Mistral, Qwen2-style).

RMSNorm, rotary position embeddings (HF "rotate half" convention), SwiGLU MLP,
grouped-query attention, optional tied embeddings. Every parameter and key
activation carries logical axis names; sharding is decided by rules outside.
Attention honours packing (segment ids, positions) and an autoregressive KV
cache (flax `cache` collection) for decoding.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from itjax.errors import UserError
from itjax.models import attention, peft_hooks, remat
from itjax.models.attention import AttentionSpec
from itjax.models.config_checks import check_fields
from itjax.models.layers import MlpBlock, Numerics, RMSNorm, dense_init, vocab_logits
from itjax.models.peft_hooks import PeftConfig


@dataclasses.dataclass(frozen=True)
class DecoderConfig(Numerics):
  """Architecture and numerics of a decoder-only model."""

  vocab_size: int = 259
  emb_dim: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 64
  mlp_dim: int = 768
  rope_theta: float = 10000.0
  # HF-style, e.g. {"rope_type": "linear", "factor": 2.0}; stored as sorted pairs so the config hashes.
  rope_scaling: dict | tuple | None = None
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  attention_bias: bool = False  # Qwen2 uses biases on q/k/v projections.
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat_policy: str = "none"  # see itjax.models.remat: none | full | dots_with_no_batch_dims | save_qkv | ...
  # auto | xla | blockwise | tpu_splash | gpu_cudnn | gpu_pallas (itjax.models.attention): auto takes Splash on
  # TPU, cuDNN flash on GPU and the XLA reference on CPU.
  attention_impl: str = "auto"
  scan_layers: bool = False
  max_decode_length: int = 2048
  peft: PeftConfig | None = None  # parameter-efficient tuning (LoRA, prefixes, adapters); see itjax.peft
  # A reward model (HF's *ForSequenceClassification with one label): a `score` [embed, 1] head in place of the
  # LM head, so the model's "logits" are one scalar per position [batch, length, 1].
  score_head: bool = False
  # PPO's critic: a `value` [embed, 1] head beside the LM head (the policy's logits are unchanged; the objective
  # reads the head's values from the final states).
  value_head: bool = False

  def __post_init__(self):
    check_fields(self)
    if self.num_heads % self.num_kv_heads:
      raise UserError(f"DecoderConfig.num_heads={self.num_heads} must be a multiple of "
                      f"DecoderConfig.num_kv_heads={self.num_kv_heads} (grouped-query attention)")
    attention.check_impl("DecoderConfig", self.attention_impl)
    remat.check_policy("DecoderConfig", self.remat_policy)
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
    object.__setattr__(self, "peft", peft_hooks.as_peft_config(self.peft))


def rope_inv_freq(cfg: DecoderConfig) -> jnp.ndarray:
  """Inverse frequencies, with HF's linear / llama3 scaling when configured."""
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
  scaling = dict(cfg.rope_scaling or ())
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "linear":
    inv = inv / scaling["factor"]
  elif kind == "llama3":
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * jnp.pi / inv
    smooth = (old_len / wavelen - low) / (high - low)
    scaled = jnp.where(wavelen > old_len / low, inv / factor, inv)
    mid = (1 - smooth) * inv / factor + smooth * inv
    is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    inv = jnp.where(is_mid, mid, scaled)
  elif kind != "default":
    raise ValueError(f"unsupported rope_scaling type {kind!r}")
  return inv


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: jnp.ndarray) -> jnp.ndarray:
  """Rotates [batch, length, heads, head_dim] by positions [batch, length] (fp32 math)."""
  freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [b, l, hd/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention with packing masks and a KV cache."""

  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, segment_ids, positions, decode: bool):
    cfg = self.cfg
    dt, pdt = cfg.compute_dtype, cfg.params_dtype

    def proj(name, heads):
      head_axis = "heads" if name == "q" else "kv_heads"
      kernel = peft_hooks.kernel(self, f"{name}_kernel", nn.with_logical_partitioning(dense_init(cfg.emb_dim),
                                                                                      ("embed", head_axis, "kv")),
                                 (cfg.emb_dim, heads, cfg.head_dim), pdt)
      y = jnp.einsum("ble,ehd->blhd", x, kernel.astype(dt))
      y = peft_hooks.lora(self, f"{name}_kernel", 1, cfg.peft)(x, y)
      if cfg.attention_bias:
        bias = self.param(f"{name}_bias", nn.with_logical_partitioning(nn.initializers.zeros, (head_axis, "kv")),
                          (heads, cfg.head_dim), pdt)
        y = y + bias.astype(dt)
      return y

    q = proj("q", cfg.num_heads)
    k = proj("k", cfg.num_kv_heads)
    v = proj("v", cfg.num_kv_heads)
    inv_freq = rope_inv_freq(cfg)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    q = remat.tag(nn.with_logical_constraint(q, ("batch", "length", "heads", "kv")), "query_proj")
    k = remat.tag(nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "kv")), "key_proj")
    v = remat.tag(nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "kv")), "value_proj")

    if decode:
      seg = jnp.ones(x.shape[:2], jnp.int32) if segment_ids is None else segment_ids
      k, v, mask = self._update_cache(k, v, seg)
      spec = AttentionSpec(dense_mask=mask)
    else:
      # Causal within a segment; segment 0 is padding and attends nowhere. None: one unpadded segment.
      spec = AttentionSpec(q_segments=segment_ids, causal=True)
    if peft_hooks.has_prefix(cfg.peft):
      k, v, mask, _ = peft_hooks.prefix(self, k, v, spec.mask(q.shape[1], k.shape[1], q.shape[0]), None, "kv_heads",
                                        cfg.peft)
      spec = AttentionSpec(dense_mask=mask)
    out = attention.attend(q, k, v, spec, impl=cfg.attention_impl, scale=cfg.head_dim ** -0.5)
    out = remat.tag(nn.with_logical_constraint(out, ("batch", "length", "heads", "kv")), remat.ATTENTION_OUT)
    o_kernel = peft_hooks.kernel(
        self, "o_kernel",
        nn.with_logical_partitioning(dense_init(cfg.num_heads * cfg.head_dim), ("heads", "kv", "embed")),
        (cfg.num_heads, cfg.head_dim, cfg.emb_dim), pdt)
    y = jnp.einsum("blhd,hde->ble", out, o_kernel.astype(dt))
    return peft_hooks.lora(self, "o_kernel", 2, cfg.peft)(out, y)

  def _update_cache(self, k, v, segment_ids):
    """Writes new keys/values at the cache index; returns full cache and mask."""
    b, t, kh, hd = k.shape
    length = self.cfg.max_decode_length
    ck = self.variable("cache", "cached_key", jnp.zeros, (b, length, kh, hd), k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, (b, length, kh, hd), v.dtype)
    cseg = self.variable("cache", "cached_segment", jnp.zeros, (b, length), jnp.int32)
    idx = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    i = idx.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, i, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, i, 0, 0))
    cseg.value = jax.lax.dynamic_update_slice(cseg.value, segment_ids.astype(jnp.int32), (0, i))
    idx.value = i + t
    slot = jnp.arange(length)
    q_slot = i + jnp.arange(t)
    causal = slot[None, :] <= q_slot[:, None]  # [t, length]
    mask = causal[None] & (cseg.value[:, None, :] != 0)
    return ck.value, cv.value, mask[:, None]


class DecoderLayer(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, segment_ids, positions, decode: bool = False):
    cfg = self.cfg
    h = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.params_dtype, name="attn_norm")(x)
    y = Attention(cfg, name="attn")(h, segment_ids, positions, decode)
    x = x + peft_hooks.adapter(self, "attn", y, cfg.peft)
    h = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.params_dtype, name="mlp_norm")(x)
    y = MlpBlock(cfg.emb_dim, cfg.mlp_dim, "silu", True, cfg.compute_dtype, cfg.params_dtype, peft=cfg.peft,
                 name="mlp")(h)
    x = x + peft_hooks.adapter(self, "mlp", y, cfg.peft)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class _ScanLayer(DecoderLayer):
  """DecoderLayer with the (carry, out) signature that nn.scan expects."""

  @nn.compact
  def __call__(self, x, segment_ids, positions, decode: bool = False):
    return super().__call__(x, segment_ids, positions, decode), None


class Decoder(nn.Module):
  """Token ids [batch, length] -> logits [batch, length, vocab] (float32)."""

  cfg: DecoderConfig

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, decode: bool = False, hidden: bool = False):
    """Logits, or with `hidden` the final-normed states [batch, length, embed] that `vocab_logits` maps to them."""
    cfg = self.cfg
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    embed = self.param("embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
                       (cfg.vocab_size, cfg.emb_dim), cfg.params_dtype)
    x = jnp.take(embed, tokens, axis=0).astype(cfg.compute_dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    layer_cls = _ScanLayer if cfg.scan_layers else DecoderLayer
    layer_cls = remat.wrap(layer_cls, cfg.remat_policy, (4,), cfg.scan_layers)
    if cfg.scan_layers:
      x, _ = nn.scan(
          layer_cls, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, name="layers")(x, segment_ids, positions, decode)
    else:
      for i in range(cfg.num_layers):
        x = layer_cls(cfg, name=f"layers_{i}")(x, segment_ids, positions, decode)

    x = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.params_dtype, name="final_norm")(x)
    if cfg.score_head:
      score = self.param("score", nn.with_logical_partitioning(dense_init(cfg.emb_dim), ("embed", None)),
                         (cfg.emb_dim, 1), cfg.params_dtype)
      return x if hidden else jnp.einsum("ble,eo->blo", x, score.astype(cfg.compute_dtype)).astype(jnp.float32)
    if cfg.value_head:
      self.param("value", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed", None)),
                 (cfg.emb_dim, 1), cfg.params_dtype)
    if cfg.tie_embeddings:
      weight = embed
    else:
      weight = self.param("lm_head", nn.with_logical_partitioning(dense_init(cfg.emb_dim), ("embed", "vocab")),
                          (cfg.emb_dim, cfg.vocab_size), cfg.params_dtype)
    if hidden:
      return x
    logits = vocab_logits(x, weight, tied=cfg.tie_embeddings, dtype=cfg.compute_dtype)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
