"""benchmarks/accelerator.py, the GPU throughput benchmark, runs end to end on CPU at a tiny shape, with
TensorFlow and seqio unimportable (the GPU machine has neither), and counts FLOPs as 6N plus attention."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from itjax.models.decoder import DecoderConfig
from itjax.models.families import interface_for
from itjax.train import perf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow  # ~35 s; the GPU run of 2026-12-04 exercised the same code
def test_runs_on_cpu_without_tensorflow_or_seqio(tmp_path):
  blocked = tmp_path / "blocked"
  for name in ("tensorflow", "seqio", "tensorflow_text"):
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]),
         "JAX_PLATFORMS": "cpu"}
  out = tmp_path / "results.json"
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "accelerator.py"), "--tiny",
                         "--no_compile", "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  [result] = json.loads(out.read_text())
  for side in ("jax", "torch"):
    r = result[side]
    assert "error" not in r, r
    assert r["tokens_per_s"] > 0 and r["step_s"] > 0 and 0 < r["loss"] < 20
  assert result["jax"]["params"] == result["torch"]["params"]  # the same architecture on both sides
  assert "| tiny (2 layers) | 64 | 2 | jax" in proc.stdout and "x |" in proc.stdout  # the ratio column


@pytest.mark.parametrize("tied", [False, True])
def test_flops_are_six_n_of_the_matmul_weights_plus_causal_attention(tied):
  cfg = DecoderConfig(vocab_size=300, emb_dim=48, num_layers=3, num_heads=6, num_kv_heads=2, head_dim=8, mlp_dim=80,
                      tie_embeddings=tied)
  params = nn.meta.unbox(jax.eval_shape(lambda: interface_for(cfg).model.init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
  matmul = sum(x.size for x in jax.tree_util.tree_leaves(params) if x.ndim >= 2)  # norms' scales are 1-D
  if not tied:
    matmul -= cfg.vocab_size * cfg.emb_dim  # the input embedding is a lookup; an untied head is a matmul
  seq = 128
  attention = 6 * cfg.num_layers * seq * cfg.num_heads * cfg.head_dim  # 12 L s h d, halved for causality
  assert perf.decoder_train_flops_per_token(cfg, seq) == 6 * matmul + attention
