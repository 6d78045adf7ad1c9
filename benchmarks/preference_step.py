"""DPO step time vs SFT step time on the same tokens: what the frozen reference policy's forward costs.

Both sides run itjax's real train step (AdamW, fp32 params, bf16 compute, scanned remat layers) on the same
random rows, each row holding two packed segments: SFT trains cross-entropy on them, DPO reads the first as a
pair's chosen response and the second as its rejected one (`preference_ids` 1 / 2) and also runs the frozen
reference policy forward (no gradient). Expectation before measuring: with `dots_with_no_batch_dims` remat a
step is about a forward, a recomputed forward and a backward (~4 forward-units), so the reference forward adds
~1 unit: ratio ~1.25. SimPO (reference-free) should cost what SFT does.

    python benchmarks/preference_step.py                    # Llama-3.2-1B shape, 2 x 1,024-token segments/row
    python benchmarks/preference_step.py --tiny             # CPU smoke run

Imports neither TensorFlow nor seqio (gin is needed: the objectives are gin-configurable).
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from itjax.core.trainable import TrainState
from itjax.models.decoder import DecoderConfig
from itjax.models.families import interface_for
from itjax.train.objectives.cross_entropy import CrossEntropy
from itjax.train.objectives.preference import PREFERENCE_IDS, Preference
from itjax.train.step import train_step

SHAPES = {
    "1b": dict(emb_dim=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192,
               vocab_size=128256, tie_embeddings=True),
    "tiny": dict(emb_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128, vocab_size=512,
                 tie_embeddings=False),
}


def _batches(n: int, rows: int, seg: int, vocab: int) -> list[dict]:
  """Rows of two packed segments of `seg` tokens each (segment ids 1, 2; positions restart)."""
  rng = np.random.default_rng(0)
  length = 2 * seg
  seg_ids = np.repeat(np.array([1, 2], np.int32), seg)[None].repeat(rows, 0)
  positions = np.tile(np.arange(seg, dtype=np.int32), 2)[None].repeat(rows, 0)
  out = []
  for _ in range(n):
    t = rng.integers(3, vocab, size=(rows, length + 1)).astype(np.int32)
    out.append({"decoder_input_tokens": jnp.asarray(t[:, :-1]), "decoder_target_tokens": jnp.asarray(t[:, 1:]),
                "decoder_loss_weights": jnp.ones((rows, length), jnp.int32),
                "decoder_segment_ids": jnp.asarray(seg_ids), "decoder_positions": jnp.asarray(positions),
                PREFERENCE_IDS: jnp.asarray(seg_ids)})
  return out


def measure(shape: str, rows: int, seg: int, steps: int) -> list[dict]:
  cfg = DecoderConfig(**SHAPES[shape], dtype="bfloat16", param_dtype="float32", remat_policy="dots_with_no_batch_dims",
                      scan_layers=True, attention_impl="auto", max_decode_length=2 * seg)
  iface = interface_for(cfg)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.0))
  schedule = optax.constant_schedule(1e-5)
  batches = _batches(steps + 2, rows, seg, cfg.vocab_size)

  @jax.jit
  def init():
    params = nn.meta.unbox(iface.model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return params, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  reference, _ = init()
  results = []
  for name, objective in (("sft", CrossEntropy(loss_chunk=None)), ("dpo", Preference(method="dpo", beta=0.1)),
                          ("simpo", Preference(method="simpo", beta=2.0))):
    _, state = init()
    frozen = {"reference": reference} if objective.frozen_trees else {}
    step = jax.jit(lambda s, b, f, o=objective: train_step(s, b, f, model=iface, optimizer=optimizer,
                                                           schedule=schedule, objective=o), donate_argnums=(0,))
    t0 = time.perf_counter()
    state, m = step(state, batches[0], frozen)
    float(m["loss"])
    compile_s = time.perf_counter() - t0
    state, m = step(state, batches[1], frozen)
    float(m["loss"])
    t0 = time.perf_counter()
    for i in range(steps):
      state, m = step(state, batches[2 + i], frozen)
    float(m["loss"])
    sec = (time.perf_counter() - t0) / steps
    results.append({"objective": name, "step_s": sec, "compile_s": compile_s, "tokens_per_s": rows * 2 * seg / sec})
    del state
  return results


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="1b", choices=sorted(SHAPES))
  p.add_argument("--rows", type=int, default=8)
  p.add_argument("--segment", type=int, default=1024, help="tokens per response segment (2 per row)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--json")
  args = p.parse_args()
  if args.tiny:
    args.shape, args.rows, args.segment, args.steps = "tiny", 2, 32, 2
  results = measure(args.shape, args.rows, args.segment, args.steps)
  base = results[0]["step_s"]
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; shape {args.shape}, {args.rows} rows x "
        f"2 x {args.segment} tokens")
  print("| objective | step | tokens/s | vs SFT step time | compile |")
  print("|---|---|---|---|---|")
  for r in results:
    print(f"| {r['objective']} | {r['step_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} | {r['step_s'] / base:.2f}x | "
          f"{r['compile_s']:.0f} s |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"shape": args.shape, "rows": args.rows, "segment": args.segment,
                 "device": jax.devices()[0].device_kind, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
