"""What fits on a TPU slice: `itjax compile`'s per-device memory for real model sizes, before and after issue 15.

Each row compiles the real train step (`itjax.train.aot.compile_train_step`, as `itjax compile --topology`
does) for compile-only TPU devices from libtpu, on a machine without TPUs: nothing is allocated, and XLA's
memory analysis of the TPU executable gives arguments, outputs, temporaries and code per device.

"before" is the code as it stood before issue 15: the reference attention (`attention_impl="xla"`: dense
mask and scores), the loss over the whole [batch, length, vocab] logits, float32 optimizer state. "after"
is the default now: `attention_impl="auto"` (Splash attention on TPU; T5's biased attention blockwise),
`sft.loss_chunk`, and for the largest rows the levers named in the row (bf16 optimizer state, remat policy).

Beside each step, the attention and the loss alone are compiled for the same device at the shapes one
device holds (one layer's attention gradient, the head + loss gradient), to show their temporaries as a
share of the step's memory.

    PYTHONPATH=/path/to/libtpu_target python benchmarks/tpu_fits.py [--rows 8b-v5p,8b-v6e,...] [--before]

Needs `libtpu` importable (`pip install -e '.[tpu]'`, or `pip install --target DIR libtpu-*.whl` and
PYTHONPATH=DIR so the test venv keeps a CPU-only jax).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import attention_memory  # noqa: E402  (benchmarks/, beside this file)
import jax  # noqa: E402
import loss_memory  # noqa: E402

from itjax import config  # noqa: E402
from itjax.train import aot  # noqa: E402

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  title: str
  topology: str
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]  # the run (both columns)
  after: tuple[str, ...]  # issue 15's levers
  loss_chunk: int = 1024
  before: tuple[str, ...] = ('DecoderConfig.attention_impl="xla"', "sft.loss_chunk=None")
  heads: tuple[int, int, int] = (32, 8, 128)  # q heads, kv heads, head dim (for the attention-alone compile)
  length: int = 8192
  loss_length: int | None = None  # tokens the loss covers per row (T5: the targets); None: `length`
  per_device_rows: int = 1
  emb_vocab: tuple[int, int] = (4096, 128256)
  bias: bool = False


LLAMA31_8B = ("models/llama3_8b.gin", "runs/finetune.gin")
_DECODER_8K = ("TASK_FEATURE_LENGTHS={'inputs': 4096, 'targets': 4096}",)
ROWS = [
    Row("8b-v5p", "Llama 3.1 8B full, seq 8,192, 256K tokens", "v5p-32", LLAMA31_8B,
        _DECODER_8K + ("BATCH_SIZE=32", "create_mesh.mesh_shape=(1, -1, 1)"),
        ("sft.loss_chunk=1024",), per_device_rows=2),
    Row("8b-v6e", "Llama 3.1 8B full, seq 8,192, 256K tokens", "v6e-32", LLAMA31_8B,
        _DECODER_8K + ("BATCH_SIZE=32", "create_mesh.mesh_shape=(1, -1, 1)"),
        ("sft.loss_chunk=1024", "make_optimizer.state_dtype='bfloat16'")),
    Row("8b-lora-v5e", "Llama 3.1 8B LoRA r=16 all-linear, bf16 base, seq 8,192, 64K tokens", "v5e-8", LLAMA31_8B,
        _DECODER_8K + ("BATCH_SIZE=8", "create_mesh.mesh_shape=(1, -1, 1)", "train.peft=@lora()", "lora.rank=16",
                       "lora.alpha=32.0", "lora.target_modules='all-linear'", "lora.base_dtype='bfloat16'"),
        ("sft.loss_chunk=512", "DecoderConfig.remat_policy='save_qkv_attention'"), loss_chunk=512),
    Row("70b-v5p", "Llama 2 70B full, seq 4,096, 256K tokens", "v5p-128", ("models/llama2_7b.gin", "runs/finetune.gin"),
        ("DecoderConfig.emb_dim=8192", "DecoderConfig.num_layers=80", "DecoderConfig.num_heads=64",
         "DecoderConfig.num_kv_heads=8", "DecoderConfig.mlp_dim=28672",
         "TASK_FEATURE_LENGTHS={'inputs': 2048, 'targets': 2048}", "BATCH_SIZE=64",
         "create_mesh.mesh_shape=(1, -1, 1)"),
        ("sft.loss_chunk=1024", "make_optimizer.state_dtype='bfloat16'"),
        heads=(64, 8, 128), length=4096, emb_vocab=(8192, 32000)),
    Row("t5xxl-v4", "Flan-T5-XXL (11B) full, 2,048 + 512, batch 64", "v4-64", ("models/flan_t5_xxl.gin",
                                                                                 "runs/finetune.gin"),
        ("TASK_FEATURE_LENGTHS={'inputs': 2048, 'targets': 512}", "BATCH_SIZE=64", "create_mesh.mesh_shape=(1, -1, 1)",
         "train.objective=@sft()"),
        ("sft.loss_chunk=512", "T5Config.attention_dropout_rate=0.0"), loss_chunk=512,
        before=('T5Config.attention_impl="xla"', "sft.loss_chunk=None"),
        heads=(64, 64, 64), length=2048, loss_length=512, per_device_rows=2, emb_vocab=(4096, 32128), bias=True),
]
COMMON = ("MODEL_DIR='(unused)'", "MIXTURE_OR_TASK_NAME='(unused)'", "TRAIN_STEPS=1")


def _compile_row(row: Row, levers: tuple[str, ...]) -> aot.MemoryReport:
  config.parse(list(row.gin_files), [*COMMON, *row.bindings, *levers])
  return aot.compile_train_step(topology=row.topology)


def _pieces(row: Row, device, chunk: int | None) -> tuple[int, int]:
  """Temporaries of one attention's gradient and of the head + loss gradient, for one device's rows."""
  h, kvh, d = row.heads
  emb, vocab = row.emb_vocab
  attn = attention_memory.temp_bytes("auto", row.per_device_rows, row.length, h, kvh, d, row.bias, device=device)
  loss = loss_memory.temp_bytes(row.per_device_rows, row.loss_length or row.length, vocab, emb, chunk, device=device)
  return attn, loss


def _cell(r: dict) -> str:
  if r.get("crash"):
    return f"libtpu crashed compiling it ({r['crash']})"
  if r["compile_error"]:
    return "DOES NOT FIT (XLA refused)"
  pct = 100 * r["total_bytes"] / r["hbm_bytes"]
  return f"{r['total_bytes'] / GIB:.1f} GiB ({pct:.0f}%){'' if r['fits'] else ' DOES NOT FIT'}"


def _compile_in_child(row: Row, column: str) -> dict:
  """One compile per process: a libtpu compiler crash (it has happened: SIGSEGV) costs one cell, not the table."""
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", row.name, "--_column", column],
                        capture_output=True, text=True)
  lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
  if proc.returncode != 0 or not lines:
    sig = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    crash = "SIGSEGV, stack overflow in the TPU compiler" if "STACK OVERFLOW" in proc.stderr else sig
    return {"crash": crash, "stderr": proc.stderr[-400:]}
  return json.loads(lines[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", default=",".join(r.name for r in ROWS))
  p.add_argument("--before", action="store_true", help="also compile the pre-issue-15 column")
  p.add_argument("--_child"), p.add_argument("--_column")
  args = p.parse_args()
  if args._child:
    row = next(r for r in ROWS if r.name == args._child)
    print(json.dumps(_compile_row(row, row.before if args._column == "before" else row.after).as_dict()))
    return
  import libtpu  # noqa: F401  (fail here, with the module name, when libtpu is missing)

  print(f"jax {jax.__version__}, libtpu {_libtpu_version()}")
  print("| row | slice | before | after | temporaries after | attention + loss temporaries (share of step) |")
  print("|---|---|---|---|---|---|")
  for row in ROWS:
    if row.name not in args.rows.split(","):
      continue
    t0 = time.perf_counter()
    before = _cell(_compile_in_child(row, "before")) if args.before else "–"
    after = _compile_in_child(row, "after")
    device = aot.topology_devices(aot.parse_topology(row.topology))[0]
    attn, loss = _pieces(row, device, row.loss_chunk)
    total, temp = after.get("total_bytes"), after.get("temp_bytes")
    share = f"{100 * (attn + loss) / total:.1f}%" if total else "–"
    temps = "–" if temp is None else f"{temp / GIB:.1f} GiB"
    print(f"| {row.title} | {row.topology} | {before} | {_cell(after)} | {temps} | "
          f"{attn / GIB:.2f} + {loss / GIB:.2f} GiB ({share}) |  [{time.perf_counter() - t0:.0f} s]", flush=True)


def _libtpu_version() -> str:
  from importlib import metadata
  try:
    return metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    return "unknown"


if __name__ == "__main__":
  main()
