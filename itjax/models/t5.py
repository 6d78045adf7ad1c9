"""T5 encoder-decoder: T5 v1.1 / Flan-T5 (gated GELU, untied head) and original T5 (ReLU, tied head).

RMS layer norm without mean subtraction, no biases, no 1/sqrt(d) attention scaling (T5 folds it
into the query init), and a bucketed relative position bias computed once per stack and shared by
all its layers (bidirectional in the encoder, causal in the decoder). Relative positions come from
the packing `positions`, and masks from segment ids, so packed examples see exactly what they
would see alone. Every parameter and key activation carries logical axis names; the decoder's
self-attention keeps a KV cache (flax `cache` collection) for step-by-step decoding.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from itjax.errors import UserError
from itjax.models import attention, peft_hooks, remat
from itjax.models.attention import AttentionSpec
from itjax.models.config_checks import check_fields
from itjax.models.layers import MlpBlock, Numerics, RMSNorm, dense_init, vocab_logits
from itjax.models.peft_hooks import PeftConfig

_MLP_ACTIVATIONS = ("gelu", "relu", "silu")


@dataclasses.dataclass(frozen=True)
class T5Config(Numerics):
  """Architecture and numerics of a T5 encoder-decoder."""

  vocab_size: int = 259
  emb_dim: int = 256
  num_encoder_layers: int = 4
  num_decoder_layers: int = 4
  num_heads: int = 4
  head_dim: int = 64
  mlp_dim: int = 768
  mlp_activation: str = "gelu"  # "gelu" (tanh approx., HF gelu_new) gated for v1.1; "relu" ungated for original T5
  gated_mlp: bool = True
  tie_embeddings: bool = False  # original T5 ties the output head to the token embedding
  # Multiply the decoder output by emb_dim**-0.5 before the head. None: iff tied (HF's rule before
  # transformers 5, which stores it separately as `scale_decoder_outputs`).
  scale_decoder_outputs: bool | None = None
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0  # as HF: embeddings, residual branches, attention probabilities, MLP hidden units
  # Dropout on the attention probabilities; None: dropout_rate (as HF and T5X). Any rate > 0 makes training use
  # the dense reference attention (the fused kernels have no dropout); 0.0 keeps the fused path at scale.
  attention_dropout_rate: float | None = None
  norm_eps: float = 1e-6
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat_policy: str = "none"  # see itjax.models.remat: none | full | dots_with_no_batch_dims | save_qkv | ...
  # auto | xla | blockwise (see itjax.models.attention): auto takes the blockwise kernel, which computes the
  # relative-position bias per tile, on TPU and GPU, and the XLA reference on CPU.
  attention_impl: str = "auto"
  scan_layers: bool = False
  max_decode_length: int = 512  # decoder KV-cache slots
  # Ends every encoder input (T5/Flan-T5 were trained so; HF's T5 tokenizers append it): HF eos_token_id.
  eos_id: int = 1
  peft: PeftConfig | None = None  # parameter-efficient tuning (LoRA, prefixes, adapters); see itjax.peft
  # A reward model: a `score` [embed, 1] head in place of the LM head, read at each decoder position (the
  # reward is the score at a response's last position: it has read the encoded prompt and the whole response).
  score_head: bool = False

  def __post_init__(self):
    check_fields(self, minimum={"eos_id": 0})
    if not 0 <= self.dropout_rate < 1:
      raise UserError(f"T5Config.dropout_rate={self.dropout_rate!r} must be in [0, 1)")
    if self.attention_dropout_rate is not None and not 0 <= self.attention_dropout_rate < 1:
      raise UserError(f"T5Config.attention_dropout_rate={self.attention_dropout_rate!r} must be None or in [0, 1)")
    if self.mlp_activation not in _MLP_ACTIVATIONS:
      raise UserError(f"unknown mlp_activation {self.mlp_activation!r}; expected one of {_MLP_ACTIVATIONS}")
    attention.check_impl("T5Config", self.attention_impl)
    remat.check_policy("T5Config", self.remat_policy)
    object.__setattr__(self, "peft", peft_hooks.as_peft_config(self.peft))

  @property
  def attention_dropout(self) -> float:
    """The rate applied to attention probabilities in training."""
    return self.dropout_rate if self.attention_dropout_rate is None else self.attention_dropout_rate

  @property
  def scales_decoder_outputs(self) -> bool:
    return self.tie_embeddings if self.scale_decoder_outputs is None else self.scale_decoder_outputs


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """Bucket of (key position - query position), exactly as mesh-tf / HF T5 compute it."""
  rel = relative_position.astype(jnp.int32)
  buckets = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
    rel = jnp.abs(rel)
  else:
    rel = -jnp.minimum(rel, 0)
  max_exact = num_buckets // 2
  is_small = rel < max_exact
  # Same fp32 op order as HF so bucket boundaries (e.g. distance 16, 32, 64) land identically;
  # max() keeps log() finite where the small branch is taken anyway.
  scaled = (jnp.log(jnp.maximum(rel, max_exact).astype(jnp.float32) / max_exact)
            / np.float32(math.log(max_distance / max_exact)) * (num_buckets - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
  return buckets + jnp.where(is_small, rel, large)


def relative_bias(table: jax.Array, query_positions: jax.Array, key_positions: jax.Array, *, bidirectional: bool,
                  num_buckets: int, max_distance: int, dtype) -> jax.Array:
  """Per-head bias [batch, heads, q, k] from bucketed (key - query) positions and a [buckets, heads] table; a pure
  function, so the blockwise attention kernel can compute it tile by tile."""
  rel = key_positions[:, None, :] - query_positions[:, :, None]  # [b, q, k]
  buckets = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
  return jnp.moveaxis(jnp.take(table.astype(dtype), buckets, axis=0), -1, 1)


class RelativePositionBias(nn.Module):
  """One stack's learned bias table [buckets, heads], as an `AttentionSpec` bias (params and function)."""

  cfg: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self) -> tuple[jax.Array, functools.partial]:
    cfg = self.cfg
    table = self.param(
        "rel_embedding", nn.with_logical_partitioning(dense_init(cfg.emb_dim), ("relpos_buckets", "heads")),
        (cfg.relative_attention_num_buckets, cfg.num_heads), cfg.params_dtype)
    return table, functools.partial(relative_bias, bidirectional=self.bidirectional,
                                    num_buckets=cfg.relative_attention_num_buckets,
                                    max_distance=cfg.relative_attention_max_distance, dtype=cfg.compute_dtype)


class T5Attention(nn.Module):
  """Multi-head attention without scaling; `cache` is None, "self" (append K/V) or "cross" (K/V once)."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x, kv_input, spec: AttentionSpec, deterministic: bool, cache: str | None = None,
               cache_index=None):
    cfg = self.cfg
    dt, pdt = cfg.compute_dtype, cfg.params_dtype
    e, h, d = cfg.emb_dim, cfg.num_heads, cfg.head_dim

    def kernel(name, fan_in, shape, axes):
      return peft_hooks.kernel(self, name, nn.with_logical_partitioning(dense_init(fan_in), axes), shape,
                               pdt).astype(dt)

    # T5 has no 1/sqrt(head_dim) in the scores: the query init carries it instead.
    q_kernel = kernel("q_kernel", e * d, (e, h, d), ("embed", "heads", "kv"))
    k_kernel = kernel("k_kernel", e, (e, h, d), ("embed", "heads", "kv"))
    v_kernel = kernel("v_kernel", e, (e, h, d), ("embed", "heads", "kv"))
    qkv_axes = ("batch", "length", "heads", "kv")
    lora_q, lora_k, lora_v = (peft_hooks.lora(self, f"{n}_kernel", 1, cfg.peft) for n in "qkv")
    q = remat.tag(nn.with_logical_constraint(lora_q(x, jnp.einsum("ble,ehd->blhd", x, q_kernel)), qkv_axes),
                  "query_proj")

    def project_kv(src):
      k = nn.with_logical_constraint(lora_k(src, jnp.einsum("ble,ehd->blhd", src, k_kernel)), qkv_axes)
      v = nn.with_logical_constraint(lora_v(src, jnp.einsum("ble,ehd->blhd", src, v_kernel)), qkv_axes)
      return remat.tag(k, "key_proj"), remat.tag(v, "value_proj")

    if cache == "self":
      k, v = project_kv(kv_input)
      shape = (x.shape[0], cfg.max_decode_length, h, d)
      ck = self.variable("cache", "cached_key", jnp.zeros, shape, dt)
      cv = self.variable("cache", "cached_value", jnp.zeros, shape, dt)
      ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(dt), (0, cache_index, 0, 0))
      cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(dt), (0, cache_index, 0, 0))
      k, v = ck.value, cv.value
    elif cache == "cross":
      # Encoder keys/values are projected on the first decoding step only, then read back.
      shape = (x.shape[0], kv_input.shape[1], h, d)
      ck = self.variable("cache", "cached_key", jnp.zeros, shape, dt)
      cv = self.variable("cache", "cached_value", jnp.zeros, shape, dt)
      k, v = jax.lax.cond(cache_index == 0, lambda: tuple(t.astype(dt) for t in project_kv(kv_input)),
                          lambda: (ck.value, cv.value))
      ck.value, cv.value = k, v
    else:
      k, v = project_kv(kv_input)
    rate = cfg.attention_dropout
    dropout = not deterministic and rate > 0.0
    if peft_hooks.has_prefix(cfg.peft) or dropout:  # both need the dense mask and bias
      mask, bias = spec.mask(q.shape[1], k.shape[1], q.shape[0]), spec.bias()
      k, v, mask, bias = peft_hooks.prefix(self, k, v, mask, bias, "heads", cfg.peft)
      spec = AttentionSpec(dense_mask=mask, dense_bias=bias)

    if not dropout:
      out = attention.attend(q, k, v, spec, impl=cfg.attention_impl, scale=1.0)
    else:  # HF drops attention probabilities in training; the fused kernels cannot.
      mask, bias = spec.dense_mask, spec.dense_bias
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
      if bias is not None:
        logits = logits + bias.astype(jnp.float32)
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      probs = nn.Dropout(rate)(jax.nn.softmax(logits, axis=-1), deterministic=False)
      out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dt), v)
    out = remat.tag(nn.with_logical_constraint(out, qkv_axes), remat.ATTENTION_OUT)
    o_kernel = kernel("o_kernel", h * d, (h, d, e), ("heads", "kv", "embed"))
    return peft_hooks.lora(self, "o_kernel", 2, cfg.peft)(out, jnp.einsum("blhd,hde->ble", out, o_kernel))


def _norm(cfg: T5Config, name: str) -> RMSNorm:
  return RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.params_dtype, name=name)


def _mlp(cfg: T5Config) -> MlpBlock:
  return MlpBlock(cfg.emb_dim, cfg.mlp_dim, cfg.mlp_activation, cfg.gated_mlp, cfg.compute_dtype, cfg.params_dtype,
                  dropout_rate=cfg.dropout_rate, peft=cfg.peft, name="mlp")


def _residual(cfg: T5Config, x, y, deterministic: bool):
  y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
  return nn.with_logical_constraint(x + y, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  cfg: T5Config

  @nn.compact
  def __call__(self, x, spec, deterministic: bool = True):
    cfg = self.cfg
    h = _norm(cfg, "attn_norm")(x)
    y = peft_hooks.adapter(self, "attn", T5Attention(cfg, name="attn")(h, h, spec, deterministic), cfg.peft)
    x = _residual(cfg, x, y, deterministic)
    y = peft_hooks.adapter(self, "mlp", _mlp(cfg)(_norm(cfg, "mlp_norm")(x), deterministic), cfg.peft)
    return _residual(cfg, x, y, deterministic)


class DecoderLayer(nn.Module):
  cfg: T5Config

  @nn.compact
  def __call__(self, x, encoded, self_spec, cross_spec, cache_index, decode: bool = False,
               deterministic: bool = True):
    cfg = self.cfg
    h = _norm(cfg, "self_attn_norm")(x)
    y = T5Attention(cfg, name="self_attn")(h, h, self_spec, deterministic, "self" if decode else None, cache_index)
    x = _residual(cfg, x, peft_hooks.adapter(self, "self_attn", y, cfg.peft), deterministic)
    h = _norm(cfg, "cross_attn_norm")(x)
    y = T5Attention(cfg, name="cross_attn")(h, encoded, cross_spec, deterministic, "cross" if decode else None,
                                            cache_index)
    x = _residual(cfg, x, peft_hooks.adapter(self, "cross_attn", y, cfg.peft), deterministic)
    y = peft_hooks.adapter(self, "mlp", _mlp(cfg)(_norm(cfg, "mlp_norm")(x), deterministic), cfg.peft)
    return _residual(cfg, x, y, deterministic)


class _ScanEncoderLayer(EncoderLayer):
  """EncoderLayer with the (carry, out) signature that nn.scan expects."""

  @nn.compact
  def __call__(self, x, spec, deterministic: bool = True):
    return super().__call__(x, spec, deterministic), None


class _ScanDecoderLayer(DecoderLayer):
  """DecoderLayer with the (carry, out) signature that nn.scan expects."""

  @nn.compact
  def __call__(self, x, encoded, self_spec, cross_spec, cache_index, decode: bool = False,
               deterministic: bool = True):
    return super().__call__(x, encoded, self_spec, cross_spec, cache_index, decode, deterministic), None


def _run_layers(cfg: T5Config, parent_cls, scan_cls, num_layers: int, static_argnums: tuple[int, ...],
                x, *args):
  """Applies `num_layers` layers (unrolled as layers_i, or one scanned `layers` stack)."""
  layer_cls = scan_cls if cfg.scan_layers else parent_cls
  layer_cls = remat.wrap(layer_cls, cfg.remat_policy, static_argnums, cfg.scan_layers)
  if cfg.scan_layers:
    x, _ = nn.scan(
        layer_cls, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args), length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name="layers")(x, *args)
    return x
  for i in range(num_layers):
    x = layer_cls(cfg, name=f"layers_{i}")(x, *args)
  return x


class T5Encoder(nn.Module):
  """Embedded tokens [batch, length, embed] -> encoded [batch, length, embed]."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x, segment_ids, positions, deterministic: bool = True):
    cfg = self.cfg
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    table, bias_fn = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")()
    # Within a segment, never onto padding (segment 0); bias from positions.
    spec = AttentionSpec(q_segments=segment_ids, q_positions=positions, bias_params=table, bias_fn=bias_fn)
    x = _run_layers(cfg, EncoderLayer, _ScanEncoderLayer, cfg.num_encoder_layers, (3,), x, spec, deterministic)
    x = _norm(cfg, "final_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class T5Decoder(nn.Module):
  """Embedded decoder tokens + encoder output -> final hidden states [batch, length, embed]."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x, encoded, segment_ids, positions, encoder_segment_ids, decode: bool = False,
               deterministic: bool = True):
    cfg = self.cfg
    b, t = segment_ids.shape
    table, bias_fn = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")()
    if decode:
      # One copy of the cached positions/segments per stack; layers only cache keys and values.
      idx = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      cpos = self.variable("cache", "cached_positions", jnp.zeros, (b, cfg.max_decode_length), jnp.int32)
      cseg = self.variable("cache", "cached_segments", jnp.zeros, (b, cfg.max_decode_length), jnp.int32)
      cache_index = idx.value
      if positions is None:
        positions = jnp.broadcast_to(cache_index + jnp.arange(t, dtype=jnp.int32), (b, t))
      cpos.value = jax.lax.dynamic_update_slice(cpos.value, positions.astype(jnp.int32), (0, cache_index))
      cseg.value = jax.lax.dynamic_update_slice(cseg.value, segment_ids.astype(jnp.int32), (0, cache_index))
      idx.value = cache_index + t
      slot = jnp.arange(cfg.max_decode_length)
      causal = slot[None, :] <= (cache_index + jnp.arange(t))[:, None]  # [t, max_decode_length]
      mask = causal[None] & (segment_ids[:, :, None] == cseg.value[:, None, :]) & (cseg.value[:, None, :] != 0)
      self_spec = AttentionSpec(q_positions=positions, kv_positions=cpos.value, bias_params=table, bias_fn=bias_fn,
                                dense_mask=mask[:, None])
    else:
      cache_index = None
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      self_spec = AttentionSpec(q_segments=segment_ids, q_positions=positions, bias_params=table, bias_fn=bias_fn,
                                causal=True)
    cross_spec = AttentionSpec(q_segments=segment_ids, kv_segments=encoder_segment_ids)

    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = _run_layers(cfg, DecoderLayer, _ScanDecoderLayer, cfg.num_decoder_layers, (6, 7), x, encoded, self_spec,
                    cross_spec, cache_index, decode, deterministic)
    x = _norm(cfg, "final_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class T5(nn.Module):
  """(encoder tokens, decoder input tokens) [batch, length] -> logits [batch, dec_length, vocab] (float32)."""

  cfg: T5Config

  def setup(self):
    cfg = self.cfg
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        (cfg.vocab_size, cfg.emb_dim), cfg.params_dtype)
    self.encoder = T5Encoder(cfg)
    self.decoder = T5Decoder(cfg)
    if cfg.score_head:
      self.score = self.param("score", nn.with_logical_partitioning(dense_init(cfg.emb_dim), ("embed", None)),
                              (cfg.emb_dim, 1), cfg.params_dtype)
    elif not cfg.tie_embeddings:
      self.lm_head = self.param("lm_head", nn.with_logical_partitioning(dense_init(cfg.emb_dim), ("embed", "vocab")),
                                (cfg.emb_dim, cfg.vocab_size), cfg.params_dtype)

  def _embed(self, tokens):
    x = jnp.take(self.embedding, tokens, axis=0).astype(self.cfg.compute_dtype)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def encode(self, encoder_tokens, encoder_segment_ids=None, encoder_positions=None, deterministic: bool = True):
    """Encoder output [batch, length, embed]; segment id 0 marks padding (default: no padding)."""
    if encoder_segment_ids is None:
      encoder_segment_ids = jnp.ones_like(encoder_tokens)
    if encoder_positions is None:
      encoder_positions = jnp.broadcast_to(jnp.arange(encoder_tokens.shape[1]), encoder_tokens.shape)
    return self.encoder(self._embed(encoder_tokens), encoder_segment_ids, encoder_positions, deterministic)

  def decode(self, encoded, encoder_segment_ids, decoder_input_tokens, decoder_segment_ids=None,
             decoder_positions=None, decode: bool = False, deterministic: bool = True, hidden: bool = False):
    """Decoder logits (float32); with decode=True, appends to the KV cache and attends to it. With `hidden`, the
    decoder's output states (scaled as the head reads them) that `vocab_logits` maps to the logits."""
    cfg = self.cfg
    if encoder_segment_ids is None:
      encoder_segment_ids = jnp.ones(encoded.shape[:2], jnp.int32)
    if decoder_segment_ids is None:
      decoder_segment_ids = jnp.ones_like(decoder_input_tokens)
    y = self.decoder(self._embed(decoder_input_tokens), encoded, decoder_segment_ids, decoder_positions,
                     encoder_segment_ids, decode, deterministic)
    if cfg.scales_decoder_outputs:
      y = y * (cfg.emb_dim ** -0.5)
    if hidden:
      return y
    if cfg.score_head:
      return jnp.einsum("ble,eo->blo", y, self.score.astype(cfg.compute_dtype)).astype(jnp.float32)
    logits = vocab_logits(y, self.embedding if cfg.tie_embeddings else self.lm_head, tied=cfg.tie_embeddings,
                          dtype=cfg.compute_dtype)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

  def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None, decoder_segment_ids=None,
               encoder_positions=None, decoder_positions=None, decode: bool = False, deterministic: bool = True,
               hidden: bool = False):
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, deterministic)
    return self.decode(encoded, encoder_segment_ids, decoder_input_tokens, decoder_segment_ids, decoder_positions,
                       decode, deterministic, hidden)
