"""Train step throughput and the cost of asynchronous checkpointing.

Times the trainer's jitted step (AdamW, the trainer's shardings, synthetic
fully packed batches) for the decoder of a models/*.gin file, and the same
loop saving a checkpoint every N steps the way `train` does (finiteness
check, then an async Orbax save), as % of the step time; with a sync save
every N for comparison. Prints steps/s, tokens/s and, given a peak, MFU.

    python benchmarks/train_step.py [--model models/decoder_tiny.gin] [--batch_size 8] [--length 128]
        [--steps 60] [--save_every 10,50] [--devices 1] [--peak_flops_per_device 1e12]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time


def _args() -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="models/decoder_tiny.gin", help="gin file that sets DecoderConfig")
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--length", type=int, default=128)
  ap.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
  ap.add_argument("--repeats", type=int, default=2, help="measurements per setting (the fastest is shown)")
  ap.add_argument("--save_every", default="10,50", help="comma-separated checkpoint periods")
  ap.add_argument("--devices", type=int, default=1, help="host CPU devices to force (data parallel)")
  ap.add_argument("--peak_flops_per_device", type=float, default=None, help="for MFU (default: known TPU/GPU)")
  return ap.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices > 1:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.devices}"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import absl.logging  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from itjax import config  # noqa: E402
from itjax.core import mesh as partitioning  # noqa: E402
from itjax.core.checkpoints import Checkpointer  # noqa: E402
from itjax.core.trainable import FullParams  # noqa: E402
from itjax.models.decoder import Decoder  # noqa: E402
from itjax.train import perf  # noqa: E402
from itjax.train.step import train_step  # noqa: E402


def _batches(n: int, batch: int, length: int, vocab: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Fully packed rows (two sequences each), so every position is a real target token."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    targets = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    half = length // 2
    seg = np.where(np.arange(length) < half, 1, 2)[None].repeat(batch, 0).astype(np.int32)
    pos = np.concatenate([np.arange(half), np.arange(length - half)])[None].repeat(batch, 0).astype(np.int32)
    inputs = np.where(pos == 0, 0, np.roll(targets, 1, axis=1)).astype(np.int32)
    out.append({"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
                "decoder_loss_weights": np.ones_like(targets), "decoder_segment_ids": seg,
                "decoder_positions": pos})
  return out


def main() -> None:
  args = ARGS
  absl.logging.set_verbosity(absl.logging.ERROR)
  config.parse([args.model], [])
  cfg = gin.get_configurable("DecoderConfig")()
  mesh = partitioning.create_mesh((-1, 1, 1))
  rules = partitioning.DEFAULT_RULES
  model, opt = Decoder(cfg), optax.adamw(1e-3)
  state, shardings = FullParams(cfg).create_state(opt, mesh, rules, jax.random.key(0))
  bs = partitioning.batch_sharding(mesh, rules)
  step_fn = jax.jit(functools.partial(train_step, model=model, optimizer=opt, schedule=lambda s: 1e-3),
                    in_shardings=(shardings, bs, {}), out_shardings=(shardings, None), donate_argnums=(0,))
  data = _batches(8, args.batch_size, args.length, cfg.vocab_size)
  n_params = perf.count_params(state.params)
  peak = args.peak_flops_per_device or perf.known_peak_flops(jax.devices()[0].device_kind)
  tokens_per_step = args.batch_size * args.length

  def run(state, save_every: int | None, async_save: bool = True):
    """(state, seconds for args.steps steps, seconds blocked in saves, seconds until the last save lands)."""
    ckpt, tmp = None, None
    if save_every:
      tmp = tempfile.mkdtemp(prefix="itjax-bench-")
      ckpt = Checkpointer(tmp, period=save_every, keep=2, async_save=async_save)
    blocked = 0.0
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
      for i in range(1, args.steps + 1):
        batch = {k: jax.make_array_from_process_local_data(bs, v) for k, v in data[i % len(data)].items()}
        state, m = step_fn(state, batch, {})
        if ckpt is not None and i % save_every == 0:
          jax.device_get(m["finite"])  # the trainer's guard before every save (waits for this step)
          t1 = time.perf_counter()
          ckpt.save(i, state, {"data": {"batches": i}})
          blocked += time.perf_counter() - t1
      jax.block_until_ready(state)
    elapsed = time.perf_counter() - t0
    wait = 0.0
    if ckpt is not None:
      t1 = time.perf_counter()
      ckpt.wait()
      wait = time.perf_counter() - t1
      ckpt.close()
      shutil.rmtree(tmp, ignore_errors=True)
    return state, elapsed, blocked, wait

  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    for i in range(3):  # compile and warm up
      batch = {k: jax.make_array_from_process_local_data(bs, v) for k, v in data[i].items()}
      state, m = step_fn(state, batch, {})
    jax.block_until_ready(state)
  print(f"decoder {cfg.num_layers}x{cfg.emb_dim} ({n_params:,} parameters), batch {args.batch_size} x "
        f"{args.length}, {jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} cores; "
        f"compile + 3 steps {time.perf_counter() - t0:.1f} s")

  periods = sorted(int(x) for x in args.save_every.split(",") if x)
  settings = [("no checkpoints", None, True)] + [(f"async save every {n}", n, True) for n in periods]
  settings += [(f"sync save every {periods[0]}", periods[0], False)] if periods else []
  times: dict[str, list[float]] = {name: [] for name, _, _ in settings}
  blocked: dict[str, list[float]] = {name: [] for name, _, _ in settings}
  waits: dict[str, list[float]] = {name: [] for name, _, _ in settings}
  for _ in range(args.repeats):  # interleaved, so drifting load hits every setting alike
    for name, every, async_save in settings:
      state, elapsed, block, wait = run(state, every, async_save)
      times[name].append(elapsed / args.steps)
      blocked[name].append(block)
      waits[name].append(wait)
  base = min(times["no checkpoints"])
  save_mb = 3 * n_params * 4 / 1e6
  print(f"{args.steps} steps x {args.repeats} repeats (fastest); a checkpoint is ~{save_mb:.0f} MB "
        "(params + 2 Adam moments, float32)")
  print("  overhead: the loop's time per step against no checkpoints; blocked: time inside save() per save, "
        "as % of the steps between saves")
  for name, every, _ in settings:
    t = min(times[name])
    line = (f"  {name:<22} {t * 1e3:8.1f} ms/step  {1 / t:7.2f} steps/s  {tokens_per_step / t:10,.0f} tokens/s  "
            f"overhead {100 * (t - base) / base:+6.1f}%")
    if every:
      per_save = statistics.median(blocked[name]) / (args.steps // every)
      line += (f"  blocked {per_save * 1e3:7.1f} ms/save = {100 * per_save / (every * base):5.1f}%"
               f"  (last save lands {statistics.median(waits[name]):.2f} s after the loop)")
    mfu = perf.mfu(n_params, tokens_per_step / t, peak, jax.device_count())
    if mfu is not None:
      line += f"  MFU {mfu:.2%}"
    print(line)
  if peak is None:
    print("  MFU: no peak FLOP/s known for this device; pass --peak_flops_per_device")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
