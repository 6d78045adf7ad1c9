"""A tiny random itjax MODEL_DIR and an in-process `itjax serve` on loopback, shared by tests/serve and tests/synth."""

import os

import flax.linen as nn
import jax

from itjax.core.checkpoints import Checkpointer
from itjax.core.model_dir import save_model_config
from itjax.models.decoder import DecoderConfig
from itjax.models.families import build_model, example_inputs
from itjax.serve.engine import Engine
from itjax.serve.server import Server

TINY = DecoderConfig(emb_dim=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                     max_decode_length=4096)


def make_model_dir(path, cfg=TINY) -> str:
  """An untrained model (random init, seed 0) saved as an itjax MODEL_DIR: model_config.json + step-0 checkpoint."""
  path = str(path)
  os.makedirs(path, exist_ok=True)
  model = build_model(cfg)
  params = nn.unbox(model.init(jax.random.key(0), *example_inputs(cfg))["params"])
  save_model_config(path, cfg)
  ckpt = Checkpointer(path, period=1, keep=None, async_save=False)
  ckpt.save(0, {"params": params}, {}, force=True)
  ckpt.wait()
  ckpt.close()
  return path


def start_server(model_dir, name="tiny", api_key=None, **engine_kwargs) -> Server:
  """`itjax serve` on 127.0.0.1 with a free port, serving in a background thread."""
  engine = Engine(str(model_dir), **engine_kwargs)
  return Server(engine, name, "127.0.0.1", 0, api_key=api_key).start()
