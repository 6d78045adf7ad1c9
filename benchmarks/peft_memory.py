"""PEFT memory and speed: trainable parameters and optimizer state, full fine-tuning vs LoRA / prefix / adapters.

Part 1 evaluates a ~1B Llama shape abstractly (jax.eval_shape: nothing is allocated): trainable
parameters, AdamW state bytes (the trainer's optimizer: global-norm clipping + AdamW, fp32 moments),
gradient bytes, and the frozen base in fp32 / bf16 (QLoRA: the stored int8 / NF4 tree itself, scales
included), for full fine-tuning and each method. Part 2
times the jitted train step on this machine's CPU for a small decoder with each method.

    python benchmarks/peft_memory.py [--model models/llama_1b.gin] [--small models/decoder_tiny.gin]
        [--batch_size 8] [--length 128] [--steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import absl.logging  # noqa: E402
import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from itjax import config  # noqa: E402
from itjax.core import mesh as partitioning  # noqa: E402
from itjax.core.trainable import trainable_for  # noqa: E402
from itjax.models.families import build_model  # noqa: E402
from itjax.models.peft_hooks import split, with_peft  # noqa: E402
from itjax.peft import adapters, lora, prefix_tuning  # noqa: E402
from itjax.peft.method import abstract_params  # noqa: E402
from itjax.train.perf import count_params as count  # noqa: E402
from itjax.train.step import train_step  # noqa: E402

METHODS = {
    "full fine-tuning": None,
    "LoRA r=8 (q, v)": lora(rank=8, alpha=16.0),
    "LoRA r=8 (all linear)": lora(rank=8, alpha=16.0, target_modules="all-linear"),
    "QLoRA r=8 (all linear), int8 base": lora(rank=8, alpha=16.0, target_modules="all-linear", base_dtype="bfloat16",
                                              quantize_base="int8"),
    "QLoRA r=8 (all linear), NF4 base": lora(rank=8, alpha=16.0, target_modules="all-linear", base_dtype="bfloat16",
                                             quantize_base="nf4"),
    "prefix tuning (16 tokens)": prefix_tuning(num_prefix_tokens=16),
    "adapters (bottleneck 64)": adapters(bottleneck_dim=64),
}


def _optimizer() -> optax.GradientTransformation:
  """The trainer's default: clipping + AdamW (fp32 moments of every trainable parameter)."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.95))


def _bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def _gib(n: int) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def memory_table(cfg) -> None:
  full = nn.unbox(abstract_params(with_peft(cfg, None)))
  n_full = count(full)
  print(f"\n## {cfg.num_layers} layers x {cfg.emb_dim} ({n_full:,} parameters), abstract evaluation\n")
  print("| method | trainable params | % of full | optimizer state | vs full | gradients | frozen base |")
  print("|---|---|---|---|---|---|---|")
  full_opt = None
  for name, peft in METHODS.items():
    trainable = full if peft is None else split(nn.unbox(abstract_params(with_peft(cfg, peft))))[1]
    opt = _bytes(jax.eval_shape(_optimizer().init, trainable))
    full_opt = full_opt or opt
    n = count(trainable)
    if peft is None:
      frozen = "–"
    elif peft.base_quant:  # the stored tree: quantized kernels, their scales, bf16 embeddings and norms
      mesh = partitioning.create_mesh((1, 1, 1), jax.devices()[:1])
      frozen = _gib(_bytes(trainable_for(with_peft(cfg, peft)).abstract_frozen(mesh, partitioning.DEFAULT_RULES)))
    else:
      frozen = f"{_gib(4 * n_full)} fp32 / {_gib(2 * n_full)} bf16"
    print(f"| {name} | {n:,} | {100 * n / n_full:.3f}% | {_gib(opt)} | {100 * opt / full_opt:.3f}% | "
          f"{_gib(_bytes(trainable))} | {frozen} |")


def _batch(batch: int, length: int, vocab: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  targets = rng.integers(1, vocab, (batch, length)).astype(np.int32)
  return {"decoder_input_tokens": np.roll(targets, 1, axis=1), "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones_like(targets)}


def step_times(cfg, args) -> None:
  mesh, rules = partitioning.create_mesh((-1, 1, 1)), partitioning.DEFAULT_RULES
  opt = _optimizer()
  bs = partitioning.batch_sharding(mesh, rules)
  batch = {k: jax.make_array_from_process_local_data(bs, v)
           for k, v in _batch(args.batch_size, args.length, cfg.vocab_size).items()}
  fns = {}
  for name, peft in METHODS.items():
    if peft is not None and peft.base_quant == "nf4" and cfg.head_dim % peft.quant_block_size:
      peft = dataclasses.replace(peft, quant_block_size=16)  # blocks must divide every kernel's input dim
    pcfg = cfg if peft is None else with_peft(cfg, peft)
    model, strategy = build_model(pcfg), trainable_for(pcfg)  # full fine-tuning, or the PEFT variables alone
    state, sh = strategy.create_state(opt, mesh, rules, jax.random.key(0))
    base = strategy.load_frozen(mesh, rules)  # PEFT: the frozen base (a seed-0 initialization)
    frozen = {} if base is None else {"base": base}
    frozen_sh = jax.tree_util.tree_map(lambda x: x.sharding, frozen)
    fn = jax.jit(functools.partial(train_step, model=model, optimizer=opt, schedule=lambda s: 1e-3, trainable=strategy),
                 in_shardings=(sh, bs, frozen_sh), out_shardings=(sh, None), donate_argnums=(0,))
    with jax.set_mesh(mesh):
      for _ in range(2):  # compile and warm up
        state, m = fn(state, batch, frozen)
      jax.block_until_ready(m)
    fns[name] = [fn, state, frozen, [], []]
  for _ in range(args.repeats):  # interleaved, so drifting load hits every method alike
    for entry in fns.values():
      fn, state, frozen, times, cpu = entry
      with jax.set_mesh(mesh):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
          state, m = fn(state, batch, frozen)
        jax.block_until_ready(state)
      times.append((time.perf_counter() - t0) / args.steps)
      cpu.append((time.process_time() - c0) / args.steps)
      entry[1] = state
  n = count(fns["full fine-tuning"][1].params)
  print(f"\n## train step on {jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} cores: "
        f"{cfg.num_layers} layers x {cfg.emb_dim} ({n:,} parameters), batch {args.batch_size} x {args.length}\n")
  # CPU time (all threads of this process) is the steadier figure on a shared machine.
  print("| method | wall time / step (best of repeats) | vs full | CPU time / step (best) | vs full |")
  print("|---|---|---|---|---|")
  ref, ref_cpu = min(fns["full fine-tuning"][3]), min(fns["full fine-tuning"][4])
  for name, (_, _, _, times, cpu) in fns.items():
    print(f"| {name} | {1000 * min(times):.1f} ms | {min(times) / ref:.2f}x | {1000 * min(cpu):.1f} ms | "
          f"{min(cpu) / ref_cpu:.2f}x |")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="models/llama_1b.gin", help="gin file of the ~1B shape (abstract only)")
  ap.add_argument("--small", default="models/decoder_tiny.gin", help="gin file of the model timed on this machine")
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--length", type=int, default=128)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--skip_memory", action="store_true", help="only time the steps")
  args = ap.parse_args()
  absl.logging.set_verbosity(absl.logging.ERROR)
  if not args.skip_memory:
    config.parse([args.model], [])
    memory_table(gin.get_configurable("DecoderConfig")())
    gin.clear_config()
  config.parse([args.small], [])
  step_times(gin.get_configurable("DecoderConfig")(), args)


if __name__ == "__main__":
  main()
