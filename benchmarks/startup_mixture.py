"""Start-up of a training stream over many small tasks: seconds to build it and to its first batch.

Generates N pre-templated datasets (3 template files of 200 lines each, P3-shaped prompts) in a temporary
directory, registers them and a mixture, and times `train_dataset` for each N. Prints one line per N and
the per-task slope; start-up that does not grow with the task count has a small slope.

    .venv/bin/python benchmarks/startup_mixture.py [--tasks 25 100 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import seqio

from itjax.data.pipeline import train_dataset
from itjax.data.pretemplated import register_pretemplated_dataset

WORDS = "the a cat dog house river light stone green quick slow bright cold warm open".split()


def write_dataset(root: str, name: str, rng: random.Random) -> list[str]:
  paths = []
  for t in range(3):
    path = os.path.join(root, f"{name}_t{t}.jsonl")
    with open(path, "w") as f:
      for _ in range(200):
        passage = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))
        prompt = [f"Template {t}: read this.", passage, "Is it positive or negative?"]
        f.write(json.dumps({"prompt": "\n\n".join(prompt if t else prompt[::-1]) + "\n",
                            "completion": rng.choice(["positive", "negative"]) + "<|endoftext|>"}) + "\n")
    paths.append(path)
  return paths


def measure(root: str, n: int, lengths: dict, batch_size: int) -> tuple[float, float, float]:
  rng = random.Random(n)
  t0 = time.perf_counter()
  names = []
  for i in range(n):
    names += register_pretemplated_dataset(f"bench{n}_d{i}", write_dataset(root, f"bench{n}_d{i}", rng),
                                           cluster="c", splits={"train": 0.9, "test": 0.1},
                                           truncation="keep_both_ends")
  seqio.MixtureRegistry.add(f"bench{n}", names, default_rate=seqio.mixing_rate_num_examples)
  t1 = time.perf_counter()
  ds = train_dataset(f"bench{n}", lengths, batch_size, seed=0)
  t2 = time.perf_counter()
  next(ds.as_numpy_iterator())
  return t1 - t0, t2 - t1, time.perf_counter() - t2


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tasks", type=int, nargs="+", default=[25, 100, 300])
  args = p.parse_args()
  lengths, rows = {"inputs": 256, "targets": 32}, []
  with tempfile.TemporaryDirectory() as root:
    for n in args.tasks:
      reg, build, first = measure(root, n, lengths, 16)
      rows.append((n, reg, build, first))
      print(f"{n:5d} tasks: register {reg:6.1f} s, build stream {build:6.1f} s, first batch {first:6.1f} s, "
            f"total {reg + build + first:6.1f} s ({(build + first) / n * 1000:.0f} ms per task to first batch)",
            flush=True)
  if len(rows) > 1:
    (n0, _, b0, f0), (n1, _, b1, f1) = rows[0], rows[-1]
    print(f"slope {n0} -> {n1} tasks: {((b1 + f1) - (b0 + f0)) / (n1 - n0) * 1000:.0f} ms per extra task")


if __name__ == "__main__":
  main()
