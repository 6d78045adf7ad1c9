"""Start-up of a training stream over many small tasks: seconds to build it and to its first batch.

Generates N pre-templated datasets (3 template files of 200 lines each, P3-shaped prompts) in a temporary
directory, registers them and a mixture, and times `train_dataset` for each N, twice: "cold" (every file
validated: a new scan cache) and "warm" (the same files registered again, as a restarted run or an eval
registers them: the validation is read from `itjax.data.scan_cache`). Prints one line per run and the
per-task slope; start-up that does not grow with the task count has a small slope.

    .venv/bin/python benchmarks/startup_mixture.py [--tasks 25 100 300 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import seqio

from itjax.data import scan_cache
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


def measure(files: list[list[str]], run: str, lengths: dict, batch_size: int) -> tuple[float, float, float]:
  t0 = time.perf_counter()
  names = []
  for i, paths in enumerate(files):
    names += register_pretemplated_dataset(f"{run}_d{i}", paths, cluster="c", splits={"train": 0.9, "test": 0.1},
                                           truncation="keep_both_ends")
  seqio.MixtureRegistry.add(run, names, default_rate=seqio.mixing_rate_num_examples)
  t1 = time.perf_counter()
  ds = train_dataset(run, lengths, batch_size, seed=0)
  t2 = time.perf_counter()
  next(ds.as_numpy_iterator())
  return t1 - t0, t2 - t1, time.perf_counter() - t2


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tasks", type=int, nargs="+", default=[25, 100, 300])
  args = p.parse_args()
  lengths, rows = {"inputs": 256, "targets": 32}, {"cold": [], "warm": []}
  with tempfile.TemporaryDirectory() as root:
    os.environ[scan_cache.ENV] = os.path.join(root, "scan_cache")  # not the user's cache
    for n in args.tasks:
      rng = random.Random(n)
      files = [write_dataset(root, f"bench{n}_d{i}", rng) for i in range(n)]
      for run in ("cold", "warm"):
        reg, build, first = measure(files, f"bench{n}_{run}", lengths, 16)
        rows[run].append((n, reg, build, first))
        print(f"{n:5d} tasks, {run}: register {reg:6.1f} s, build stream {build:6.1f} s, first batch {first:6.1f} s, "
              f"total {reg + build + first:6.1f} s ({(build + first) / n * 1000:.0f} ms per task to first batch)",
              flush=True)
  for run, found in rows.items():
    if len(found) > 1:
      (n0, _, b0, f0), (n1, _, b1, f1) = found[0], found[-1]
      print(f"slope {n0} -> {n1} tasks, {run}: {((b1 + f1) - (b0 + f0)) / (n1 - n0) * 1000:.0f} ms per extra task")


if __name__ == "__main__":
  main()
