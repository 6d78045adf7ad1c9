"""Memory of the loss: the full cross-entropy vs `sft.loss_chunk`, from XLA's compiled memory analysis.

Compiles (never runs) the gradient of the head + cross-entropy with respect to the final states and the
unembedding, on abstract inputs of a Llama-3-sized head (vocab 128,256, embed 4,096) for one device, and
prints XLA's temporary bytes for the full loss and for chunks of the length. The rest of the step is not
included: this isolates what the loss itself holds. Compiled for the local backend (CPU here), whose buffer
assignment differs from a TPU's in detail but not in what must exist at once.

    python benchmarks/loss_memory.py [--rows 8] [--length 8192] [--vocab 128256] [--embed 4096] [--chunks 512,2048]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from itjax.models.layers import vocab_logits
from itjax.train.objectives.cross_entropy import chunked_cross_entropy_sums, cross_entropy_sums


def temp_bytes(rows: int, length: int, vocab: int, embed: int, chunk: int | None,
               device: jax.Device | None = None) -> int:
  """XLA's temporary bytes for d(loss)/d(states, head) at these shapes (bfloat16 states and head), compiled for
  `device` (default: the local backend's)."""
  def loss(states, head, targets, weights):
    fn = functools.partial(vocab_logits, weight=head, tied=False, dtype=jnp.bfloat16)
    if chunk is None:
      return cross_entropy_sums(fn(states), targets, weights, z_loss=1e-4)["loss"]
    return chunked_cross_entropy_sums(states, fn, targets, weights, z_loss=1e-4, chunk=chunk)["loss"]

  place = None if device is None else jax.sharding.SingleDeviceSharding(device)
  args = [jax.ShapeDtypeStruct(s, d, sharding=place) for s, d in (
      ((rows, length, embed), jnp.bfloat16), ((embed, vocab), jnp.bfloat16), ((rows, length), jnp.int32),
      ((rows, length), jnp.int32))]
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=8)
  ap.add_argument("--length", type=int, default=8192)
  ap.add_argument("--vocab", type=int, default=128_256)
  ap.add_argument("--embed", type=int, default=4096)
  ap.add_argument("--chunks", default="512,2048")
  args = ap.parse_args()
  print(f"loss of {args.rows} x {args.length} tokens, vocab {args.vocab:,}, embed {args.embed:,}, "
        f"backend {jax.default_backend()} (jax {jax.__version__}); float32 logits of the batch would be "
        f"{args.rows * args.length * args.vocab * 4 / 2**30:.1f} GiB")
  for chunk in [None, *(int(c) for c in args.chunks.split(","))]:
    b = temp_bytes(args.rows, args.length, args.vocab, args.embed, chunk)
    print(f"  {'full loss' if chunk is None else f'loss_chunk={chunk}':<16} temporaries {b / 2**30:8.2f} GiB",
          flush=True)


if __name__ == "__main__":
  main()
