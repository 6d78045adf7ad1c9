"""Start-up of the commands that read no task data: wall time and whether TensorFlow / seqio got imported.

    python benchmarks/startup.py [--repeats 3]

Builds a tiny random HF Llama with transformers (no download), then times, each in a fresh process:
`itjax --help`, `itjax convert --from_hf` of that model, `itjax convert --to_hf` back, and
`itjax infer` of one prompt; and counts the modules a fresh `import itjax.cli` / `itjax.train.aot`
loads. Prints the median of `--repeats` runs per command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
PROBE = ("import sys, json, atexit\n"
         "atexit.register(lambda: print('MODULES', json.dumps(sorted({m.split('.')[0] for m in sys.modules})), "
         "file=sys.stderr))\n"
         "sys.argv = ['itjax'] + sys.argv[1:]\n"
         "from itjax.cli import main\n"
         "sys.exit(main())\n")


def _tiny_hf(path: str) -> None:
  import torch
  import transformers

  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)
  transformers.LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)


def _run(args: list[str]) -> tuple[float, list[str]]:
  t0 = time.perf_counter()
  out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, env=ENV, capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  if out.returncode != 0:
    raise SystemExit(f"itjax {' '.join(args)} failed:\n{out.stderr[-2000:]}")
  line = next(ln for ln in out.stderr.splitlines() if ln.startswith("MODULES "))
  return seconds, json.loads(line[len("MODULES "):])


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  work = tempfile.mkdtemp(prefix="itjax-startup-")
  hf, out, back = (os.path.join(work, n) for n in ("hf", "itjax", "hf_back"))
  _tiny_hf(hf)
  commands = {
      "itjax --help": ["--help"],
      "itjax convert --from_hf (tiny Llama)": ["convert", "--from_hf", hf, "--output", out],
      "itjax convert --to_hf": ["convert", "--to_hf", back, "--checkpoint", out],
      "itjax infer (1 prompt, 2 tokens)": ["infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{out}'",
                                          "--gin.infer.max_new_tokens=2", "--input", "hi"],
  }
  print(f"| command | median of {a.repeats} (s) | imports TensorFlow | imports seqio |")
  print("|---|---|---|---|")
  for name, args in commands.items():
    times, modules = [], []
    for _ in range(a.repeats):
      if args[0] == "convert" and args[1] == "--from_hf":
        subprocess.run(["rm", "-rf", out])
      seconds, modules = _run(args)
      times.append(seconds)
    print(f"| {name} | {statistics.median(times):.2f} | {'tensorflow' in modules} | {'seqio' in modules} |")


if __name__ == "__main__":
  main()
