"""Training throughput on one accelerator: itjax's real train step vs PyTorch (`transformers` + torch.compile).

For each model shape and sequence length: tokens/s and MFU of a full optimizer step (AdamW, global-norm
clipping; fp32 params and moments, bf16 compute; remat `dots_with_no_batch_dims`, scanned layers,
`attention_impl="auto"` (cuDNN flash on GPU), `sft.loss_chunk`), and the same model in PyTorch as users would
run it: `LlamaForCausalLM` with SDPA attention, bf16 autocast over fp32 params, fused AdamW, `torch.compile`,
gradient checkpointing on. MFU counts FLOPs as MaxText does (`itjax.train.perf.decoder_train_flops_per_token`:
matmuls plus causal attention) over the device's dense bf16 peak. Each side runs in a process of its own (the
two allocators would fight over the GPU), on identical random token batches of full, unpacked rows.

Shapes: `1b` is Llama-3.2-1B (16 layers x 2,048, 32 q / 8 kv heads x 64, vocab 128,256, tied head); `8b` is
Llama-3.1-8B with `--layers_8b` layers (default 16 of 32: the full 8B's fp32 params, grads and AdamW moments
alone are 128 GB, which with activations does not fit one 141 GB H200; MFU is per FLOP either way).

    python benchmarks/accelerator.py                     # 1b and 8b at 2,048 and 8,192, both frameworks
    python benchmarks/accelerator.py --shapes 1b --lengths 2048 --sides jax
    python benchmarks/accelerator.py --tiny              # CPU smoke run (tests/benchmarks call it)

Imports neither TensorFlow nor seqio (the GPU machine has neither); `gin` must be importable (a carried wheel).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from itjax.train.perf import known_peak_flops  # noqa: E402

SHAPES = {  # emb, layers, heads, kv heads, head dim, mlp, vocab, tied
    "1b": dict(emb_dim=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192,
               vocab_size=128256, tie_embeddings=True),
    "8b": dict(emb_dim=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, mlp_dim=14336,
               vocab_size=128256, tie_embeddings=False),
    "tiny": dict(emb_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128, vocab_size=512,
                 tie_embeddings=False),
}


@dataclasses.dataclass(frozen=True)
class Case:
  shape: str
  seq: int
  batch: int
  layers: int
  steps: int
  loss_chunk: int | None


def _shape(case: Case) -> dict:
  return {**SHAPES[case.shape], "num_layers": case.layers}


def _tokens(case: Case, vocab: int):
  import numpy as np
  rng = np.random.default_rng(0)
  return rng.integers(3, vocab, size=(case.steps + 2, case.batch, case.seq + 1)).astype(np.int32)


# ----------------------------------------------------------------------------- itjax side


def run_jax(case: Case) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from itjax.core.trainable import TrainState
  from itjax.models.decoder import DecoderConfig
  from itjax.models.families import interface_for
  from itjax.train import perf
  from itjax.train.objectives.cross_entropy import CrossEntropy
  from itjax.train.step import train_step

  cfg = DecoderConfig(**_shape(case), dtype="bfloat16", param_dtype="float32", remat_policy="dots_with_no_batch_dims",
                      scan_layers=True, attention_impl="auto", max_decode_length=case.seq)
  iface = interface_for(cfg)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.0))
  schedule = optax.constant_schedule(1e-4)
  tokens = _tokens(case, cfg.vocab_size)

  def batch(i):
    t = tokens[i]
    return {"decoder_input_tokens": jnp.asarray(t[:, :-1]), "decoder_target_tokens": jnp.asarray(t[:, 1:]),
            "decoder_loss_weights": jnp.ones((case.batch, case.seq), jnp.int32)}

  @jax.jit
  def init():
    params = nn.meta.unbox(iface.model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  step = jax.jit(lambda s, b: train_step(s, b, model=iface, optimizer=optimizer, schedule=schedule,
                                         objective=CrossEntropy(loss_chunk=case.loss_chunk)), donate_argnums=(0,))
  state = init()
  n = perf.count_params(state.params)
  t0 = time.perf_counter()
  state, m = step(state, batch(0))
  float(m["loss"])
  compile_s = time.perf_counter() - t0
  state, m = step(state, batch(1))
  float(m["loss"])
  t0 = time.perf_counter()
  for i in range(case.steps):
    state, m = step(state, batch(2 + i))
  loss = float(m["loss"])
  sec = (time.perf_counter() - t0) / case.steps
  return {"params": n, "step_s": sec, "compile_s": compile_s, "loss": loss, "device": jax.devices()[0].device_kind,
          "version": f"jax {jax.__version__}", "flops_per_token": perf.decoder_train_flops_per_token(cfg, case.seq)}


# ----------------------------------------------------------------------------- PyTorch side


def run_torch(case: Case, compile_model: bool) -> dict:
  import torch
  import transformers

  s = _shape(case)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  hf_cfg = transformers.LlamaConfig(
      vocab_size=s["vocab_size"], hidden_size=s["emb_dim"], intermediate_size=s["mlp_dim"],
      num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"], num_key_value_heads=s["num_kv_heads"],
      head_dim=s["head_dim"], max_position_embeddings=case.seq, tie_word_embeddings=s["tie_embeddings"],
      rope_theta=500000.0, attn_implementation="sdpa", use_cache=False)
  model = transformers.LlamaForCausalLM(hf_cfg).to(device=device, dtype=torch.float32)
  model.gradient_checkpointing_enable()
  model.train()
  n = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0,
                          fused=device == "cuda")
  fwd = torch.compile(model) if compile_model else model
  tokens = torch.from_numpy(_tokens(case, s["vocab_size"])).long()
  autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)

  def step(i):
    x = tokens[i].to(device, non_blocking=True)
    with autocast:
      loss = _loss(fwd(input_ids=x[:, :-1]).logits, x[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  step(0).item()
  compile_s = time.perf_counter() - t0
  step(1).item()
  sync()
  t0 = time.perf_counter()
  for i in range(case.steps):
    loss = step(2 + i)
  loss = loss.item()
  sync()
  sec = (time.perf_counter() - t0) / case.steps
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  return {"params": n, "step_s": sec, "compile_s": compile_s, "loss": loss, "device": name,
          "version": f"torch {torch.__version__}, transformers {transformers.__version__}"
                     + (", torch.compile" if compile_model else ", eager")}


def _loss(logits, targets):
  """Mean token cross-entropy in fp32, as transformers' own loss computes it."""
  import torch
  return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ----------------------------------------------------------------------------- driver


def _child(side: str, case: Case, args, workdir: str) -> dict:
  out = os.path.join(workdir, f"{side}_{case.shape}_{case.seq}.json")
  cmd = [sys.executable, os.path.abspath(__file__), "--_child", side, "--_case", json.dumps(dataclasses.asdict(case)),
         "--_out", out] + (["--no_compile"] if args.no_compile else [])
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
  if proc.returncode != 0:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)[-400:] or f"exit {proc.returncode}"}
  with open(out) as f:
    return json.load(f)


def _count(n: int) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default="1b,8b")
  p.add_argument("--lengths", default="2048,8192")
  p.add_argument("--tokens_per_batch", type=int, default=16384, help="batch = this / length (at least 1)")
  p.add_argument("--layers_8b", type=int, default=16)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--loss_chunk", type=int, default=2048)
  p.add_argument("--sides", default="jax,torch")
  p.add_argument("--no_compile", action="store_true", help="PyTorch eager (no torch.compile)")
  p.add_argument("--tiny", action="store_true", help="a tiny shape at length 64 (a CPU smoke run)")
  p.add_argument("--json", help="also write the results here")
  p.add_argument("--child_timeout", type=float, default=900)
  p.add_argument("--_child"), p.add_argument("--_case"), p.add_argument("--_out")
  args = p.parse_args()
  if args._child:
    case = Case(**json.loads(args._case))
    result = run_jax(case) if args._child == "jax" else run_torch(case, compile_model=not args.no_compile)
    with open(args._out, "w") as f:
      json.dump(result, f)
    return

  if args.tiny:
    args.shapes, args.lengths, args.tokens_per_batch, args.steps, args.loss_chunk = "tiny", "64", 128, 2, 32
  cases = [Case(shape, seq, max(1, args.tokens_per_batch // seq),
                args.layers_8b if shape == "8b" else SHAPES[shape]["num_layers"], args.steps, args.loss_chunk)
           for shape in args.shapes.split(",") for seq in (int(s) for s in args.lengths.split(","))]
  sides = args.sides.split(",")
  results = []
  print("| shape | seq | batch | side | params | step | tokens/s | MFU | compile | vs PyTorch |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as workdir:
    for case in cases:
      row = {side: _child(side, case, args, workdir) for side in sides}
      flops = row.get("jax", {}).get("flops_per_token")
      for r in row.values():
        if "error" not in r:
          r["tokens_per_s"] = case.batch * case.seq / r["step_s"]
          peak = known_peak_flops(r["device"])
          r["mfu"] = flops * r["tokens_per_s"] / peak if peak and flops else None
      base = row.get("torch", {}).get("tokens_per_s")
      for side, r in row.items():
        label = f"| {case.shape} ({case.layers} layers) | {case.seq:,} | {case.batch} | {side}"
        if "error" in r:
          print(f"{label} | FAILED: {r['error']} | | | | | |", flush=True)
          continue
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if side != "torch" and base else ""
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{label} ({r['version']}) | {_count(r['params'])} | {r['step_s'] * 1e3:.0f} ms | "
              f"{r['tokens_per_s']:,.0f} | {mfu} | {r['compile_s']:.0f} s | {ratio} |", flush=True)
      results.append({"case": dataclasses.asdict(case), **row})
  if results:
    devices = {r.get(s, {}).get("device") for r in results for s in sides} - {None}
    print(f"device: {', '.join(sorted(devices))}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
