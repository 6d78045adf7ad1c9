"""PEFT through training: the step updates only the trainable variables, and `itjax train` runs every method
from gin on the tiny config (trainable-only checkpoints with a base reference, resume, eval, export)."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from itjax import config
from itjax.cli import main
from itjax.core import mesh as partitioning
from itjax.core.model_dir import ModelDir, load_model_config
from itjax.core.trainable import TrainState, trainable_for
from itjax.models.decoder import DecoderConfig
from itjax.models.families import build_model, example_inputs
from itjax.models.peft_hooks import flatten, is_peft_leaf, split, with_peft
from itjax.models.t5 import T5Config
from itjax.peft import adapters, lora, prefix_tuning
from itjax.peft.method import init_trainable
from itjax.train.step import train_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "tests", "tiny.gin")
DEC = DecoderConfig(vocab_size=64, emb_dim=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=48)
T5C = T5Config(vocab_size=64, emb_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_heads=2, head_dim=16,
               mlp_dim=48, dropout_rate=0.1)


def _batch(cfg, rows=4, length=16):
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 64, size=(rows, length)).astype(np.int32)
  batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, 1),
           "decoder_loss_weights": np.ones((rows, length), np.float32)}
  if isinstance(cfg, T5Config):
    batch["encoder_input_tokens"] = tokens[:, ::-1].copy()
  return batch


@pytest.mark.parametrize("base_cfg,peft", [(DEC, lora(rank=4, dropout=0.1, target_modules="all-linear")),
                                           (DEC, adapters(bottleneck_dim=8)),
                                           pytest.param(T5C, lora(rank=4, dropout=0.1, target_modules="all-linear"),
                                                        marks=pytest.mark.slow)],
                         ids=["decoder_lora", "decoder_adapters", "t5_lora"])
def test_a_step_updates_only_the_trainable_variables(base_cfg, peft):
  cfg = with_peft(base_cfg, peft)
  model = build_model(cfg)
  base = nn.unbox(build_model(base_cfg).init(jax.random.key(0), *example_inputs(base_cfg))["params"])
  trainable = init_trainable(cfg, jax.random.key(1))
  optimizer = optax.adamw(1e-2)
  opt_state = optimizer.init(trainable)
  # The optimizer keeps state for the trainable variables only (adam: two moments of each).
  n_trainable = sum(x.size for x in jax.tree_util.tree_leaves(trainable))
  assert sum(x.size for x in jax.tree_util.tree_leaves(opt_state)) == 2 * n_trainable + 1
  state = TrainState(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=opt_state)
  base_before = jax.tree_util.tree_map(np.array, base)
  strategy = trainable_for(cfg)
  new, metrics = jax.jit(lambda s, b, f: train_step(s, b, f, model=model, optimizer=optimizer, trainable=strategy,
                                                     schedule=lambda _: 1e-2, dropout_seed=0))(
      state, _batch(cfg), {"base": base})
  assert bool(metrics["finite"]) and float(metrics["grad_norm"]) > 0
  assert jax.tree_util.tree_structure(new.params) == jax.tree_util.tree_structure(trainable)
  jax.tree_util.tree_map(np.testing.assert_array_equal, base, base_before)  # not donated, not updated
  old, upd = flatten(trainable), flatten(new.params)
  changed = {k for k in old if not np.array_equal(old[k], upd[k])}
  # Zero-initialized halves (LoRA's B, the adapters' up projection) move first; with them at zero, A and
  # `down` get no gradient on step one.
  moving = {k for k in old if k.endswith(("_lora_b", "_adapter_up", "_adapter_up_bias"))}
  assert moving and moving <= changed


# ----------------------------------------------------------------------------- itjax train through gin


@pytest.mark.parametrize("name,configurable", [("lora", lora), ("prefix", prefix_tuning), ("adapters", adapters)])
def test_example_gins_select_each_method(name, configurable):
  config.parse([f"examples/tiny_heldout_{name}.gin"], ["MODEL_DIR='unused'"])
  try:
    assert gin.query_parameter("train.peft").selector.endswith(configurable.__name__)
    assert configurable().methods == (name,)  # the gin file's settings pass the configurable's checks
  finally:
    gin.clear_config()


def _train(model_dir, *extra: str) -> int:
  return main(["train", f"--gin_file={TINY}", f"--model_dir={model_dir}", "--gin.checkpoint_settings.keep=None",
               *extra])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  """A tiny fully fine-tuned model: the frozen base of the PEFT runs."""
  d = tmp_path_factory.mktemp("base")
  assert _train(d, "--gin.EVAL_MIXTURES=None", "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2") == 0
  return d


METHODS = {
    "lora": ["--gin.train.peft=@lora()", "--gin.lora.rank=4", "--gin.lora.target_modules='all-linear'",
             "--gin.lora.dropout=0.1"],
    "prefix": ["--gin.train.peft=@prefix_tuning()", "--gin.prefix_tuning.num_prefix_tokens=4"],
    "adapters": ["--gin.train.peft=@adapters()", "--gin.adapters.bottleneck_dim=8",
                 "--gin.adapters.base_dtype='bfloat16'"],
}


def _checkpoint_params(step_dir) -> list[str]:
  meta = ocp.PyTreeCheckpointer().metadata(os.path.join(step_dir, "state")).item_metadata
  return sorted(flatten(dict(meta["params"])))


def _metrics_steps(run) -> list[int]:
  with open(os.path.join(run, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f if "loss" in json.loads(line)]


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory):
  """method -> (MODEL_DIR, params stored at step 2, step 2's metadata) of a PEFT run: 2 steps from the base,
  then resumed to 4 (the base reloads from the checkpoint's reference: no INITIAL_CHECKPOINT_PATH this time)
  with the end-of-run evaluation."""
  done = {}

  def get(method):
    if method not in done:
      run = tmp_path_factory.mktemp(method)
      assert _train(run, *METHODS[method], f"--gin.INITIAL_CHECKPOINT_PATH='{base_dir}'", "--gin.EVAL_MIXTURES=None",
                    "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2") == 0
      step_dir = run / "checkpoints" / "2"
      done[method] = (run, _checkpoint_params(step_dir), json.loads((step_dir / "meta" / "metadata").read_text()))
      assert _train(run, *METHODS[method], "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2") == 0
    return done[method]

  return get


@pytest.mark.parametrize("method", [m if m == "lora" else pytest.param(m, marks=pytest.mark.slow) for m in METHODS])
def test_each_method_trains_resumes_and_evaluates_through_gin(base_dir, runs, method):
  run, stored, meta = runs(method)
  assert stored and all(is_peft_leaf(k) for k in stored)  # only the trainable variables are checkpointed
  assert meta["peft_base"] == {"checkpoint": str(base_dir), "seed": 0}
  cfg = load_model_config(str(run))
  assert cfg.peft is not None and cfg.peft.methods == (method,)
  assert "trainable parameters" in (run / "model-info.txt").read_text().splitlines()[0]
  assert _metrics_steps(run) == [1, 2, 3, 4]  # resumed at 3
  assert (run / "eval" / "heldout" / "report.json").exists()

  mesh, rules = partitioning.create_mesh(), partitioning.logical_axis_rules()
  params = ModelDir.open(str(run)).load(mesh, rules).params
  base = ModelDir.open(str(base_dir)).load(mesh, rules).params
  frozen, trainable = split(params)
  dtype = jnp.bfloat16 if method == "adapters" else jnp.float32
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(dtype))),
                         frozen, base)
  init = flatten(init_trainable(cfg, jax.random.key(0)))
  assert any(not np.array_equal(np.asarray(v), np.asarray(init[k])) for k, v in flatten(trainable).items())


def test_lora_run_exports_merged_and_as_a_peft_adapter(base_dir, runs, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft_lib = pytest.importorskip("peft")
  run = runs("lora")[0]
  for args in (["--to_hf", str(tmp_path / "base_hf"), "--checkpoint", str(base_dir)],
               ["--to_hf", str(tmp_path / "merged_hf"), "--checkpoint", str(run)],
               ["--to_peft", str(tmp_path / "adapter"), "--checkpoint", str(run),
                "--base_model", str(tmp_path / "base_hf")]):
    assert main(["convert", *args]) == 0
  assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]

  tokens = np.random.default_rng(0).integers(1, 259, size=(2, 12))
  loaded = ModelDir.open(str(run)).load(partitioning.create_mesh(), partitioning.logical_axis_rules())
  model, params = loaded.interface.model, loaded.params
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens, jnp.int32)))

  def torch_logits(m):
    with torch.no_grad():
      return m(torch.from_numpy(tokens)).logits.float().numpy()

  load = lambda p: transformers.AutoModelForCausalLM.from_pretrained(p, attn_implementation="eager").eval()
  merged = torch_logits(load(tmp_path / "merged_hf"))
  adapted = torch_logits(peft_lib.PeftModel.from_pretrained(load(tmp_path / "base_hf"), tmp_path / "adapter").eval())
  assert np.abs(torch_logits(load(tmp_path / "base_hf")) - ours).max() > 1e-4  # the LoRA update matters
  assert np.abs(merged - ours).max() < 1e-4
  assert np.abs(adapted - ours).max() < 1e-4
