"""Input pipeline throughput and packing efficiency of a mixture.

Prints packed tokens/s (non-padding tokens delivered per second by
`itjax.data.pipeline.train_dataset`), the packing efficiency (non-padding
fraction of the batch) packed vs unpacked, and, given a training run's
metrics.jsonl, the ratio of pipeline to training tokens/s.

    python benchmarks/data_pipeline.py [--mixture proc_heldout_nli] [--metrics runs/tiny_heldout/metrics.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import absl.logging  # noqa: E402
import numpy as np  # noqa: E402

import itjax_tasks  # noqa: E402,F401
from itjax.data.pipeline import train_dataset  # noqa: E402


def measure(mixture: str, lengths: dict, batch: int, pack: bool, batches: int) -> tuple[float, float, float]:
  """(tokens/s, non-padding fraction, start-up seconds) over `batches` batches after the first."""
  t0 = time.time()
  it = train_dataset(mixture, lengths, batch, seed=0, pack=pack).as_numpy_iterator()
  first = next(it)
  startup = time.time() - t0
  width = first["decoder_target_tokens"].size
  real, t0 = 0, time.time()
  for _ in range(batches):
    real += int(np.sum(next(it)["decoder_target_tokens"] > 0))
  elapsed = time.time() - t0
  return real / elapsed, real / (width * batches), startup


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--mixture", default="proc_heldout_nli")
  ap.add_argument("--inputs", type=int, default=96)
  ap.add_argument("--targets", type=int, default=32)
  ap.add_argument("--batch_size", type=int, default=16)
  ap.add_argument("--batches", type=int, default=300)
  ap.add_argument("--metrics", default=None, help="a training run's metrics.jsonl, for the ratio")
  args = ap.parse_args()
  absl.logging.set_verbosity(absl.logging.ERROR)
  lengths = {"inputs": args.inputs, "targets": args.targets}
  print(f"mixture {args.mixture}, lengths {lengths}, batch {args.batch_size}, {args.batches} batches")
  results = {}
  for pack in (True, False):
    tps, eff, startup = measure(args.mixture, lengths, args.batch_size, pack, args.batches)
    results[pack] = tps
    print(f"  {'packed  ' if pack else 'unpacked'}: {tps:10,.0f} non-padding tokens/s   "
          f"efficiency {eff:6.1%}   first batch after {startup:.1f} s")
  if args.metrics:
    with open(args.metrics) as f:
      rows = [json.loads(line) for line in f]
    train_tps = float(np.median([r["tokens_per_s"] for r in rows[1:]] or [rows[0]["tokens_per_s"]]))
    print(f"  training step (median of {args.metrics}): {train_tps:,.0f} tokens/s -> pipeline/train ratio "
          f"{results[True] / train_tps:.1f}x")


if __name__ == "__main__":
  main()
