"""Input pipeline throughput and packing efficiency of a mixture: unpacked vs seqio's packer vs best fit.

Prints, for unpacked rows, seqio's greedy packer and the default best-fit packer
(`itjax.data.packing`), the non-padding tokens delivered per second by
`itjax.data.pipeline.train_dataset` and the packing efficiency (non-padding
fraction of the batches), and, given a training run's metrics.jsonl, the ratio of
pipeline to training tokens/s. `--dedup_task T` measures streaming deduplication on one task:
examples read and delivered per second with and without it, and what it dropped.

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
from itjax.data.pipeline import train_dataset, train_examples  # noqa: E402
from itjax.data.stream_stats import StreamStats  # noqa: E402

RUNS = {  # name -> train_dataset keyword arguments
    "unpacked": {"pack": False},
    "seqio packer": {"pack": True, "packer": "seqio"},
    "best-fit packer": {"pack": True, "packer": "best_fit"},
}


def measure(mixture: str, lengths: dict, batch: int, batches: int, stats: StreamStats, **kwargs
            ) -> tuple[float, float, float]:
  """(tokens/s, non-padding fraction, start-up seconds) over `batches` batches after the first."""
  t0 = time.time()
  it = train_dataset(mixture, lengths, batch, seed=0, stats=stats, **kwargs).as_numpy_iterator()
  first = next(it)
  startup = time.time() - t0
  width = first["decoder_target_tokens"].size
  real, t0 = 0, time.time()
  for _ in range(batches):
    real += int(np.sum(next(it)["decoder_target_tokens"] > 0))
  elapsed = time.time() - t0
  return real / elapsed, real / (width * batches), startup


def measure_dedup(task: str, lengths: dict, n: int) -> None:
  """Examples delivered (and read) per second by one task's stream, without and with deduplication."""
  print(f"dedup on {task}, {n} examples delivered:")
  for dedup in (False, True):
    stats = StreamStats()
    it = train_examples(task, lengths, seed=0, dedup=dedup, stats=stats).as_numpy_iterator()
    next(it)
    t0 = time.time()
    for _ in range(n):
      next(it)
    elapsed = time.time() - t0
    c = stats.dedup.get(task)
    extra = (f", {c.examples / elapsed:,.0f} read/s, dropped {c.dropped:,} of {c.examples:,} read "
             f"({c.epochs} passes done)") if c else ""
    print(f"  {'dedup' if dedup else 'plain'}: {n / elapsed:8,.0f} examples/s delivered{extra}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--mixture", default="proc_heldout_nli")
  ap.add_argument("--inputs", type=int, default=96)
  ap.add_argument("--targets", type=int, default=32)
  ap.add_argument("--batch_size", type=int, default=16)
  ap.add_argument("--batches", type=int, default=300)
  ap.add_argument("--metrics", default=None, help="a training run's metrics.jsonl, for the ratio")
  ap.add_argument("--dedup_task", default=None, help="a task to measure streaming deduplication on")
  ap.add_argument("--dedup_examples", type=int, default=3000)
  args = ap.parse_args()
  absl.logging.set_verbosity(absl.logging.ERROR)
  lengths = {"inputs": args.inputs, "targets": args.targets}
  print(f"mixture {args.mixture}, lengths {lengths}, batch {args.batch_size}, {args.batches} batches")
  results = {}
  for name, kwargs in RUNS.items():
    tps, eff, startup = measure(args.mixture, lengths, args.batch_size, args.batches, StreamStats(), **kwargs)
    results[name] = tps
    print(f"  {name:<16}: {tps:10,.0f} non-padding tokens/s   efficiency {eff:6.1%}   "
          f"first batch after {startup:.1f} s")
  if args.dedup_task:
    measure_dedup(args.dedup_task, lengths, args.dedup_examples)
  if args.metrics:
    with open(args.metrics) as f:
      rows = [json.loads(line) for line in f]
    train_tps = float(np.median([r["tokens_per_s"] for r in rows[1:]] or [rows[0]["tokens_per_s"]]))
    print(f"  training step (median of {args.metrics}): {train_tps:,.0f} tokens/s -> pipeline/train ratio "
          f"{results['best-fit packer'] / train_tps:.1f}x (best fit)")


if __name__ == "__main__":
  main()
