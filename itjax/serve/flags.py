"""`itjax serve`'s command-line flags (kept apart from the server, so `itjax --help` loads no model code)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
  """Adds `serve` to the `itjax` subparsers."""
  p = sub.add_parser("serve", help="serve a checkpoint on the OpenAI protocol (/v1/completions, /v1/chat/completions)")
  p.add_argument("--checkpoint", required=True, help="itjax MODEL_DIR or checkpoint (see `itjax convert --from_hf`)")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--model_name", default=None, help="the name clients ask for (default: the directory's name)")
  p.add_argument("--max_batch", type=int, default=8, help="rows (prompts x choices) decoded together")
  p.add_argument("--batch_wait_ms", type=float, default=10.0, help="how long to wait for more requests to batch")
  p.add_argument("--mesh_shape", default="-1,1,1", help="(data, fsdp, tensor) mesh, e.g. 1,1,-1 for tensor parallel")
  p.add_argument("--api_key_env", default=None, help="require `Authorization: Bearer $VAR` (the variable's name)")
  return p
