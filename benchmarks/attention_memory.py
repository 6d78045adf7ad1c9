"""Memory of attention: the XLA reference vs the fused kernels, from XLA's compiled memory analysis.

Compiles (never runs) the gradient of one packed, causal, grouped-query attention (Llama-3-8B heads: 32 query,
8 kv, head_dim 128; bfloat16) with respect to q, k, v, on abstract inputs for one device, and prints XLA's
temporary bytes per implementation. `--t5` adds T5-XXL-shaped heads (64 x 64) with the relative-position bias,
where the reference also holds the [batch, heads, q, k] bias. Compiled for the local backend (CPU here: the
Pallas kernels are Splash and Triton, which compile only for TPU and GPU, so the CPU rows are xla and blockwise;
`itjax compile --topology` measures Splash inside a whole step).

    python benchmarks/attention_memory.py [--rows 1] [--lengths 2048,8192] [--t5]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from itjax.models import attention
from itjax.models.attention import AttentionSpec
from itjax.models.t5 import relative_bias


def temp_bytes(impl: str, rows: int, length: int, heads: int, kv_heads: int, dim: int, bias: bool,
               device: jax.Device | None = None) -> int:
  """XLA's temporary bytes for d(sum of attention)/d(q, k, v) (and the bias table) at these shapes, compiled for
  `device` (default: the local backend's; a compile-only TPU device from libtpu is how `tpu_fits.py` uses it)."""
  bias_fn = functools.partial(relative_bias, bidirectional=False, num_buckets=32, max_distance=128,
                              dtype=jnp.bfloat16) if bias else None

  def loss(q, k, v, seg, pos, table):
    spec = AttentionSpec(q_segments=seg, q_positions=pos, bias_params=table, bias_fn=bias_fn, causal=True)
    return jnp.sum(attention.attend(q, k, v, spec, impl=impl, scale=dim ** -0.5).astype(jnp.float32))

  bf16, mesh = jnp.bfloat16, _one_device_mesh(device)
  shapes = [((rows, length, heads, dim), bf16), ((rows, length, kv_heads, dim), bf16),
            ((rows, length, kv_heads, dim), bf16), ((rows, length), jnp.int32), ((rows, length), jnp.int32),
            ((32, heads), jnp.float32)]
  args = [jax.ShapeDtypeStruct(s, d, sharding=NamedSharding(mesh, PartitionSpec())) for s, d in shapes]
  with jax.set_mesh(mesh):  # the Pallas kernels run in shard_map over the mesh; its platform picks `auto`
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 5))).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def _one_device_mesh(device: jax.Device | None) -> Mesh:
  return Mesh(np.asarray([device if device is not None else jax.devices()[0]]), ("data",))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=1)
  ap.add_argument("--lengths", default="2048,8192")
  ap.add_argument("--t5", action="store_true", help="also T5-XXL heads with the relative-position bias")
  args = ap.parse_args()
  shapes = [("Llama-3-8B heads (32 q / 8 kv x 128)", 32, 8, 128, False)]
  if args.t5:
    shapes.append(("T5-XXL heads (64 x 64) + relative bias", 64, 64, 64, True))
  print(f"backend {jax.default_backend()} (jax {jax.__version__}); gradient of one attention, {args.rows} row(s), "
        "bfloat16, packed causal")
  for name, heads, kv_heads, dim, bias in shapes:
    for length in (int(x) for x in args.lengths.split(",")):
      scores = args.rows * heads * length * length * 4 / 2**30
      row = [f"{name}, length {length:,} (fp32 scores would be {scores:.1f} GiB):"]
      for impl in ("xla", "blockwise"):
        row.append(f"{impl} {temp_bytes(impl, args.rows, length, heads, kv_heads, dim, bias) / 2**30:.3f} GiB")
      print("  " + "  ".join(row), flush=True)


if __name__ == "__main__":
  main()
