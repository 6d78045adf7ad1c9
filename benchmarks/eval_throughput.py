"""Evaluation throughput, itjax vs transformers (PyTorch, CPU), on the same random Llama weights.

Builds a small random `LlamaForCausalLM` with transformers, saves it as safetensors and imports it with
`itjax.models.hf_llama.load_hf_dir`, then times, on the same synthetic examples and batch size:

  * rank classification: every (prompt, option + EOS) pair scored, as `itjax.eval.rank.rank_classify`
    does, against a transformers forward pass + log-softmax over the same BOS + prompt + option rows;
  * generation: greedy continuations of N new tokens, `itjax.eval.generate.predict` against
    `generate(do_sample=False)` on the same left-padded BOS + prompt rows.

Prints examples/s of each (fastest of --repeats passes, run in turns; the first itjax pass, which
compiles, is timed apart), the itjax/transformers ratio, and how far the two agree (chosen options,
log-likelihoods, generated text).

    python benchmarks/eval_throughput.py [--examples 256] [--options 4] [--new_tokens 32] [--batch_size 64]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from itjax.data.vocab import REGISTERED  # noqa: E402
from itjax.eval.predict import predict  # noqa: E402
from itjax.eval.rank import rank_classify  # noqa: E402
from itjax.models.decoder import Decoder  # noqa: E402
from itjax.models.decoding import strip_eos  # noqa: E402
from itjax.models.hf_decoder import load_hf_dir  # noqa: E402
from itjax.models.scoring import score_continuations  # noqa: E402

BOS = 0
WORDS = ("red green blue lamp river stone apple seven paper quick slow north south music cloud table bright "
         "window garden winter summer yellow orange silver copper forest desert ocean valley mountain").split()


def make_examples(n: int, options: int, seed: int = 0) -> list[dict]:
  """Synthetic prompts of 40-160 bytes, each with `options` one- or two-word answer options."""
  rng = random.Random(seed)
  vocab = REGISTERED
  rows = []
  for i in range(n):
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 24))]
    prompt = f"Question {i}: " + " ".join(words)[:140] + "? Answer:"
    opts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2))) for _ in range(options)]
    rows.append({"inputs": prompt, "input_ids": list(vocab.encode(prompt)), "options": opts})
  return rows


def build_models(emb_dim: int, layers: int, heads: int, kv_heads: int, mlp_dim: int, path: str):
  """A random HF Llama (eval mode) and the same weights as an itjax (Decoder, params)."""
  torch.manual_seed(0)
  vocab = REGISTERED
  config = transformers.LlamaConfig(
      vocab_size=vocab.vocab_size, hidden_size=emb_dim, intermediate_size=mlp_dim, num_hidden_layers=layers,
      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=emb_dim // heads, max_position_embeddings=1024,
      rms_norm_eps=1e-6, bos_token_id=BOS, eos_token_id=vocab.eos_id, pad_token_id=0, tie_word_embeddings=False)
  hf = transformers.LlamaForCausalLM(config).eval()
  hf.save_pretrained(path, safe_serialization=True)
  cfg, params = load_hf_dir(path)
  return hf, Decoder(cfg), jax.device_put(params)


def option_pairs(rows: list[dict]) -> list[tuple[list[int], list[int]]]:
  """(prompt ids, option ids + EOS) in rank_classify's order."""
  vocab = REGISTERED
  return [(r["input_ids"], list(vocab.encode(o)) + [vocab.eos_id]) for r in rows for o in r["options"]]


@torch.inference_mode()
def hf_scores(hf, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> np.ndarray:
  """Sum of log p(option | BOS + prompt) per pair: right-padded forward passes, log-softmax, gather."""
  out = []
  for i in range(0, len(pairs), batch_size):
    chunk = pairs[i: i + batch_size]
    seqs = [[BOS] + p + c for p, c in chunk]
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    weights = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for j, ((p, _), s) in enumerate(zip(chunk, seqs, strict=True)):
      ids[j, : len(s)] = torch.tensor(s)
      mask[j, : len(s)] = 1
      weights[j, len(p): len(s) - 1] = 1  # target t predicts s[t + 1]: the option tokens
    logp = torch.log_softmax(hf(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, ids[:, 1:, None])[..., 0]
    out.append((tok * weights).sum(-1).numpy())
  return np.concatenate(out)


@torch.inference_mode()
def hf_generate(hf, rows: list[dict], batch_size: int, new_tokens: int) -> list[str]:
  """Greedy continuations of BOS + prompt (left-padded), up to EOS, decoded like `predict`."""
  vocab = REGISTERED
  out = []
  for i in range(0, len(rows), batch_size):
    prompts = [[BOS] + r["input_ids"] for r in rows[i: i + batch_size]]
    length = max(map(len, prompts))
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, p in enumerate(prompts):
      ids[j, length - len(p):] = torch.tensor(p)
      mask[j, length - len(p):] = 1
    gen = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                      eos_token_id=vocab.eos_id, pad_token_id=0)
    out += [vocab.decode(strip_eos(row, vocab.eos_id)) for row in gen[:, length:].numpy()]
  return out


def timed(fn: Callable[[], object]) -> tuple[object, float]:
  t0 = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - t0


def best_of(repeats: int, *fns: Callable[[], object]) -> list[tuple[object, float]]:
  """(last result, fastest time) of each fn, run in turns so that load on a shared machine hits them alike."""
  best: list[tuple[object, float]] = [(None, float("inf"))] * len(fns)
  for _ in range(repeats):
    for k, fn in enumerate(fns):
      result, t = timed(fn)
      best[k] = (result, min(best[k][1], t))
  return best


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--examples", type=int, default=256)
  ap.add_argument("--options", type=int, default=4)
  ap.add_argument("--new_tokens", type=int, default=32)
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3, help="timed passes of each; the fastest counts")
  ap.add_argument("--emb_dim", type=int, default=128)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--kv_heads", type=int, default=2)
  ap.add_argument("--mlp_dim", type=int, default=384)
  args = ap.parse_args()
  vocab = REGISTERED
  rows = make_examples(args.examples, args.options)
  with tempfile.TemporaryDirectory() as path:
    hf, model, params = build_models(args.emb_dim, args.layers, args.heads, args.kv_heads, args.mlp_dim, path)
  n_params = sum(p.numel() for p in hf.parameters())
  print(f"random Llama: {n_params / 1e6:.2f}M params (emb {args.emb_dim}, {args.layers} layers, {args.heads} heads / "
        f"{args.kv_heads} kv), byte vocabulary; {args.examples} examples, batch {args.batch_size}; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; best of {args.repeats}")

  # Rank classification: every option of every example scored.
  pairs = option_pairs(rows)
  rank = lambda: rank_classify(model, params, rows, vocab, batch_size=args.batch_size)
  _, cold = timed(rank)
  (ranked, t_jax), (hf_ll, t_hf) = best_of(args.repeats, rank, lambda: hf_scores(hf, pairs, args.batch_size))
  jax_ll, _ = score_continuations(model, params, pairs, batch_size=args.batch_size)  # unrounded, for agreement
  hf_pick = [r["options"][int(np.argmax(s))] for r, s in zip(rows, hf_ll.reshape(len(rows), -1), strict=True)]
  same = sum(r["option"] == o for r, o in zip(ranked, hf_pick, strict=True))
  print(f"rank classification ({args.options} options, {len(pairs)} pairs):")
  print(f"  itjax        {args.examples / t_jax:9.1f} examples/s   ({t_jax:.2f} s; first pass incl. compile "
        f"{cold:.2f} s)")
  print(f"  transformers {args.examples / t_hf:9.1f} examples/s   ({t_hf:.2f} s)")
  print(f"  ratio itjax/transformers {t_hf / t_jax:.2f}x; same option chosen {same}/{len(rows)}, "
        f"max |loglik diff| {np.max(np.abs(jax_ll - hf_ll)):.1e}")

  # Generation: greedy, up to new_tokens after each prompt.
  gen = lambda: predict(model, params, rows, vocab, batch_size=args.batch_size, max_new_tokens=args.new_tokens)
  _, cold = timed(gen)
  (jax_out, t_jax), (hf_out, t_hf) = best_of(args.repeats, gen,
                                             lambda: hf_generate(hf, rows, args.batch_size, args.new_tokens))
  same = sum(a == b for a, b in zip(jax_out, hf_out, strict=True))
  print(f"generation (greedy, up to {args.new_tokens} new tokens):")
  print(f"  itjax        {args.examples / t_jax:9.1f} examples/s   ({t_jax:.2f} s; first pass incl. compile "
        f"{cold:.2f} s)")
  print(f"  transformers {args.examples / t_hf:9.1f} examples/s   ({t_hf:.2f} s)")
  print(f"  ratio itjax/transformers {t_hf / t_jax:.2f}x; identical generations {same}/{len(rows)}")


if __name__ == "__main__":
  main()
