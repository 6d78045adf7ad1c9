"""Model step and greedy-decode speed: itjax (jitted JAX, fp32) against transformers (PyTorch eager, fp32).

Two models with identical weights on both sides (built in transformers with random weights, saved,
and imported into itjax): (a) a ~100M-parameter Llama-shaped decoder, (b) a t5-small-shaped T5
(ReLU MLP, tied head). Prints, per model, forward+backward time of a cross-entropy loss (no
optimizer update) and tokens/s, then greedy-decode tokens/s with a KV cache (itjax `greedy_decode`
vs `generate(do_sample=False)`, no early EOS so both emit exactly --new_tokens), with the
itjax / transformers speed ratio (> 1: itjax is faster). Compilation is excluded (one warm-up call).

Each framework runs in a process of its own: with both loaded, each one's idle worker threads
spin and slow the other down several-fold on a small machine.

    python benchmarks/model_step.py [--batch 4 --seq 256 --steps 3 --new_tokens 32]
    python benchmarks/model_step.py --big_only  # ~1B decoder, seq 2048, bf16: step time and MFU (for a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

MODELS = ("llama", "t5")


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[object], object] = lambda x: x) -> float:
  """Fastest seconds of `sync(fn())` over `repeats` calls after one warm-up (compilation) call.

  The minimum, not the median: on a shared machine other work only ever adds time.
  """
  sync(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return min(times)


def inputs(args, vocab_size: int) -> dict[str, np.ndarray]:
  """The same random token arrays for both sides."""
  rng = np.random.default_rng(0)
  x = rng.integers(3, vocab_size, size=(args.batch, args.seq)).astype(np.int32)
  dec = rng.integers(3, vocab_size, size=(args.batch, args.seq)).astype(np.int32)
  dec_in = np.concatenate([np.zeros((args.batch, 1), np.int32), dec[:, :-1]], axis=1)
  return {"x": x, "dec": dec, "dec_in": dec_in, "prompt": x[:, : args.prompt]}


# ----------------------------------------------------------------------------- transformers side


def build_hf(name: str):
  import transformers

  if name == "llama":
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                                   num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=4096,
                                   tie_word_embeddings=False, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg).eval()
  cfg = transformers.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                              feed_forward_proj="relu", tie_word_embeddings=True, dropout_rate=0.0,
                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  return transformers.T5ForConditionalGeneration(cfg).eval()


def run_torch(args, name: str, workdir: str) -> dict:
  """Builds and saves the HF model (for the itjax side), then times it in PyTorch eager."""
  import torch

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  hf = build_hf(name)
  if not os.path.exists(os.path.join(workdir, name)):
    hf.save_pretrained(os.path.join(workdir, name), safe_serialization=True)
  data = {k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs(args, hf.config.vocab_size).items()}
  xent = lambda logits, t: torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1))

  def step():
    hf.zero_grad(set_to_none=True)
    if name == "llama":
      loss = xent(hf(input_ids=data["x"][:, :-1]).logits, data["x"][:, 1:])
    else:
      loss = xent(hf(input_ids=data["x"], decoder_input_ids=data["dec_in"]).logits, data["dec"])
    loss.backward()
    return loss.item()

  out = {}

  def decode():
    with torch.no_grad():
      kw = dict(do_sample=False, num_beams=1, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                eos_token_id=None, pad_token_id=0, use_cache=True)
      if name == "llama":
        out["tokens"] = hf.generate(input_ids=data["prompt"], **kw)[:, args.prompt:].numpy()
      else:
        out["tokens"] = hf.generate(input_ids=data["x"], decoder_start_token_id=0, **kw)[:, 1:].numpy()

  hf.train()  # gradients on (dropout is 0 in both models)
  step_s = timed(step, args.steps)
  hf.eval()
  decode_s = timed(decode, args.decode_repeats)
  np.save(os.path.join(workdir, f"{name}_torch_tokens.npy"), out["tokens"])
  return {"step_s": step_s, "decode_s": decode_s, "params": sum(p.numel() for p in hf.parameters()),
          "threads": torch.get_num_threads(), "version": torch.__version__}


# ----------------------------------------------------------------------------- itjax side


def _xent(logits, targets):
  import optax

  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def run_jax(args, name: str, workdir: str) -> dict:
  """Imports the saved HF model into itjax and times the jitted step and greedy decoding."""
  import jax
  import jax.numpy as jnp

  from itjax.models import decoding, enc_dec_decoding, hf_t5
  from itjax.models import hf_decoder as hf_llama
  from itjax.models.decoder import Decoder
  from itjax.models.t5 import T5
  from itjax.train import perf

  path = os.path.join(workdir, name)
  if name == "llama":
    cfg, params = hf_llama.load_hf_dir(path)
    model = Decoder(cfg)
  else:
    cfg, params = hf_t5.load_hf_dir(path, dropout_rate=0.0)
    model = T5(cfg)
  params = jax.device_put(params)
  data = {k: jnp.asarray(v) for k, v in inputs(args, cfg.vocab_size).items()}

  if name == "llama":
    loss = lambda p: _xent(model.apply({"params": p}, data["x"][:, :-1]), data["x"][:, 1:])
  else:
    loss = lambda p: _xent(model.apply({"params": p}, data["x"], data["dec_in"]), data["dec"])
  step = jax.jit(jax.value_and_grad(loss))
  step_s = timed(lambda: step(params), args.steps, jax.block_until_ready)

  if name == "llama":
    decode = lambda: decoding.greedy_decode(model, params, data["prompt"], jnp.ones_like(data["prompt"]),
                                            max_new_tokens=args.new_tokens, eos_id=-1)
  else:
    decode = lambda: enc_dec_decoding.greedy_decode(model, params, data["x"], max_new_tokens=args.new_tokens,
                                                    eos_id=-1)
  decode_s = timed(decode, args.decode_repeats, jax.block_until_ready)
  np.save(os.path.join(workdir, f"{name}_jax_tokens.npy"), np.asarray(decode()))
  return {"step_s": step_s, "decode_s": decode_s, "params": perf.count_params(params), "version": jax.__version__,
          "device": jax.devices()[0].device_kind}


def run_big(args) -> None:
  """~1B Llama-shaped decoder (TinyLlama shape), seq 2048, bf16 compute and params: fwd+bwd time and MFU."""
  import flax.linen as nn
  import jax

  from itjax.models.decoder import Decoder, DecoderConfig
  from itjax.train import perf

  cfg = DecoderConfig(vocab_size=32000, emb_dim=2048, num_layers=args.big_layers, num_heads=32, num_kv_heads=4,
                      head_dim=64, mlp_dim=5632, dtype="bfloat16", param_dtype="bfloat16",
                      remat_policy="dots_with_no_batch_dims", scan_layers=True, max_decode_length=args.big_seq)
  model = Decoder(cfg)
  x = jax.random.randint(jax.random.key(0), (args.big_batch, args.big_seq + 1), 3, cfg.vocab_size)
  params = jax.jit(lambda: nn.meta.unbox(model.init(jax.random.key(1), x[:1, :8])["params"]))()
  n = perf.count_params(params)
  step = jax.jit(jax.value_and_grad(lambda p: _xent(model.apply({"params": p}, x[:, :-1]), x[:, 1:])))
  sec = timed(lambda: step(params), args.steps, jax.block_until_ready)
  tps = args.big_batch * args.big_seq / sec
  device = jax.devices()[0]
  peak = perf.known_peak_flops(device.device_kind)
  mfu = perf.mfu(n, tps, peak, 1)
  # 6N leaves out attention scores: 12 * layers * seq * heads * head_dim more FLOPs per token (fwd+bwd, causal
  # attention counted in full, as is usual).
  attn = 12 * cfg.num_layers * args.big_seq * cfg.num_heads * cfg.head_dim
  print(f"~1B decoder ({n / 1e9:.2f}B params, bf16, remat dots_with_no_batch_dims) on {device.device_kind}: "
        f"batch {args.big_batch} x seq {args.big_seq}: {sec * 1e3:.0f} ms/step, {tps:,.0f} tokens/s, "
        + (f"MFU {mfu:.1%} (6N), {(6 * n + attn) * tps / peak:.1%} (6N + attention)" if mfu is not None
           else "MFU n/a (no known peak FLOP/s for this device)"))


# ----------------------------------------------------------------------------- driver


def _child(args, side: str, name: str, workdir: str) -> dict:
  """Runs one side for one model in a fresh interpreter; returns its JSON result."""
  result = os.path.join(workdir, f"{name}_{side}.json")
  flags = [f"--{k}={v}" for k, v in vars(args).items()
           if k not in ("side", "model", "workdir", "big", "big_only", "rounds") and v is not None]
  subprocess.run([sys.executable, os.path.abspath(__file__), f"--side={side}", f"--model={name}",
                  f"--workdir={workdir}", *flags], check=True)
  with open(result) as f:
    return json.load(f)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--steps", type=int, default=2, help="timed fwd+bwd steps (fastest counts), after one warm-up")
  ap.add_argument("--prompt", type=int, default=64, help="decoder-only prompt length for decoding")
  ap.add_argument("--new_tokens", type=int, default=32)
  ap.add_argument("--decode_repeats", type=int, default=3)
  ap.add_argument("--rounds", type=int, default=1, help="alternate torch / itjax processes this often, keep the best")
  ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
  ap.add_argument("--only", choices=MODELS, default=None)
  ap.add_argument("--big", action="store_true", help="also time a ~1B decoder at seq 2048 in bf16 (for a GPU)")
  ap.add_argument("--big_only", action="store_true", help="only the ~1B measurement")
  ap.add_argument("--big_layers", type=int, default=22)
  ap.add_argument("--big_seq", type=int, default=2048)
  ap.add_argument("--big_batch", type=int, default=8)
  ap.add_argument("--side", choices=["torch", "jax"], default=None, help=argparse.SUPPRESS)
  ap.add_argument("--model", choices=MODELS, default=None, help=argparse.SUPPRESS)
  ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()

  if args.side:  # a child: measure one side of one model
    result = (run_torch if args.side == "torch" else run_jax)(args, args.model, args.workdir)
    with open(os.path.join(args.workdir, f"{args.model}_{args.side}.json"), "w") as f:
      json.dump(result, f)
    return

  if not args.big_only:
    rows, info = [], {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as workdir:
      for name in [args.only] if args.only else MODELS:
        theirs = ours = None
        for _ in range(args.rounds):
          t = _child(args, "torch", name, workdir)  # first: it writes the HF model the itjax side imports
          o = _child(args, "jax", name, workdir)
          theirs = t if theirs is None else {**t, **{k: min(t[k], theirs[k]) for k in ("step_s", "decode_s")}}
          ours = o if ours is None else {**o, **{k: min(o[k], ours[k]) for k in ("step_s", "decode_s")}}
        info = {"torch": theirs, "jax": ours}
        same = np.mean(np.load(os.path.join(workdir, f"{name}_jax_tokens.npy"))
                       == np.load(os.path.join(workdir, f"{name}_torch_tokens.npy")))
        m = f"{'Llama' if name == 'llama' else 'T5'} {ours['params'] / 1e6:.0f}M"
        step_tokens = args.batch * (args.seq - 1) if name == "llama" else args.batch * 2 * args.seq
        shape = f"{args.batch}x{args.seq}" if name == "llama" else f"{args.batch}x({args.seq}+{args.seq})"
        rows.append((f"{m} fwd+bwd [{shape}]", ours["step_s"], theirs["step_s"], step_tokens))
        prompt = f"{args.batch}x{args.prompt}" if name == "llama" else f"{args.batch}x{args.seq}"
        rows.append((f"{m} greedy decode [{prompt} -> {args.new_tokens}] (same tokens {same:.0%})", ours["decode_s"],
                     theirs["decode_s"], args.batch * args.new_tokens))
    print(f"\njax {info['jax']['version']} on {info['jax']['device']} (jitted, fp32) vs torch "
          f"{info['torch']['version']} eager fp32, {info['torch']['threads']} threads; {os.cpu_count()} cores; "
          f"separate processes, best of {args.rounds} round(s); load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'itjax s':>8}  {'HF s':>8}  {'itjax tok/s':>11}  {'HF tok/s':>9}  "
          f"{'itjax/HF':>8}")
    for name, ours_s, theirs_s, tokens in rows:
      print(f"{name:<{width}}  {ours_s:8.3f}  {theirs_s:8.3f}  {tokens / ours_s:11,.0f}  {tokens / theirs_s:9,.0f}  "
            f"{theirs_s / ours_s:7.2f}x")
  if args.big or args.big_only:
    run_big(args)


if __name__ == "__main__":
  main()
