"""RL rollouts inside the train step vs `itjax serve`-style generation: sampled tokens per second.

The same prompts (B prompts x G samples, P prompt tokens, T new tokens, temperature 1) are sampled three ways:
`serve`: the model interface's `generate` (what `itjax serve` and `itjax infer` call: host-side left padding,
then the jitted KV-cached sampling loop); `rollout`: GRPO's `prepare` as the train step runs it (the same
decode loop inside one jitted program, plus the reward, the advantages and the reference policy's
log-probs); `step`: the whole GRPO train step (rollout + forward/backward + AdamW). Expectation before measuring:
rollout ~ serve (one decode loop; the reference forward adds one prefill-sized pass), and the step dominated
by decoding at these lengths (T sequential steps against one parallel forward/backward).

    python benchmarks/rollout.py                 # Llama-3.2-1B shape, 8 prompts x 8 samples, 128 + 128 tokens
    python benchmarks/rollout.py --tiny          # CPU smoke run

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
from itjax.train.objectives.grpo import GRPO
from itjax.train.step import train_step

SHAPES = {
    "1b": dict(emb_dim=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192,
               vocab_size=128256, tie_embeddings=True, dtype="bfloat16"),
    "tiny": dict(emb_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128, vocab_size=512,
                 tie_embeddings=False),
}


def _time(fn, repeats: int) -> tuple[float, float]:
  """(first call s, median of `repeats` later calls s), each blocked until ready."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def measure(shape: str, prompts: int, group: int, prompt_len: int, new_tokens: int, repeats: int) -> list[dict]:
  cfg = DecoderConfig(**SHAPES[shape], param_dtype="float32", scan_layers=True, attention_impl="auto",
                      remat_policy="dots_with_no_batch_dims",
                      max_decode_length=prompt_len + new_tokens + 8)
  iface = interface_for(cfg)
  params = jax.jit(lambda: nn.meta.unbox(iface.model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))()
  eos = cfg.vocab_size - 1  # a random model rarely samples it: rows run the full budget
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size - 1, size=(prompts, prompt_len)).astype(np.int32)
  # Unpacked PrefixLM rows: BOS + prompt, then a one-token "answer" the exact-match reward compares with.
  length = prompt_len + 2
  batch = {"decoder_input_tokens": np.zeros((prompts, length), np.int32),
           "decoder_target_tokens": np.zeros((prompts, length), np.int32),
           "decoder_loss_weights": np.zeros((prompts, length), np.int32)}
  batch["decoder_input_tokens"][:, 1:prompt_len + 1] = tokens
  batch["decoder_target_tokens"][:, :prompt_len] = tokens
  batch["decoder_target_tokens"][:, prompt_len] = 7
  batch["decoder_loss_weights"][:, prompt_len] = 1
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  sampled = prompts * group * new_tokens
  objective = GRPO(group_size=group, max_new_tokens=new_tokens, temperature=1.0, eos_id=eos)
  out = []

  serve_prompts = [list(map(int, p)) for p in np.repeat(tokens, group, axis=0)]
  first, sec = _time(lambda: iface.generate(params, serve_prompts, max_new_tokens=new_tokens, eos_id=eos,
                                            temperature=1.0, seed=0), repeats)
  out.append({"what": "serve (interface.generate)", "first_s": first, "s": sec, "tokens_per_s": sampled / sec})

  rollout = jax.jit(lambda p, b: objective.prepare(iface, p, b, {"reference": p}, jnp.zeros((), jnp.int32)))
  first, sec = _time(lambda: rollout(params, batch), repeats)
  out.append({"what": "rollout (GRPO prepare in jit)", "first_s": first, "s": sec, "tokens_per_s": sampled / sec})

  optimizer = optax.adamw(1e-6)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  step = jax.jit(lambda s, b: train_step(s, b, {"reference": params}, model=iface, optimizer=optimizer,
                                         schedule=optax.constant_schedule(1e-6), objective=objective))
  first, sec = _time(lambda: step(state, batch)[1]["loss"], repeats)
  out.append({"what": "GRPO train step (rollout + update)", "first_s": first, "s": sec,
              "tokens_per_s": sampled / sec})
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="1b", choices=sorted(SHAPES))
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--json")
  args = p.parse_args()
  if args.tiny:
    args.shape, args.prompts, args.group, args.prompt_len, args.new_tokens, args.repeats = "tiny", 4, 4, 16, 16, 2
  rows = measure(args.shape, args.prompts, args.group, args.prompt_len, args.new_tokens, args.repeats)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; shape {args.shape}, {args.prompts} prompts x "
        f"{args.group} samples, {args.prompt_len} prompt + {args.new_tokens} new tokens")
  print("| what | time (median) | sampled tokens/s | vs serve | first call |")
  print("|---|---|---|---|---|")
  base = rows[0]["tokens_per_s"]
  for r in rows:
    print(f"| {r['what']} | {r['s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x | "
          f"{r['first_s']:.1f} s |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"shape": args.shape, "device": jax.devices()[0].device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
