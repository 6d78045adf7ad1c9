"""`itjax convert`: HF directory -> itjax model dir -> HF directory, logits unchanged."""

import numpy as np
import pytest
import torch
import transformers

from itjax.cli import main


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6)
  model = transformers.LlamaForCausalLM(cfg).eval()
  d = tmp_path_factory.mktemp("hf")
  model.save_pretrained(d, safe_serialization=True)
  return d, model


def _logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def test_import_export_round_trip(hf_llama, tmp_path, capsys):
  src, ref = hf_llama
  out = tmp_path / "itjax_model"
  assert main(["convert", "--from_hf", str(src), "--output", str(out)]) == 0
  assert (out / "model_config.json").exists() and (out / "checkpoints" / "0").is_dir()
  # The imported model directory serves `itjax infer` like a trained one.
  assert main(["infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH={out}", "--gin.infer.max_new_tokens=2",
               "--input", "hello"]) == 0
  back = tmp_path / "hf_again"
  assert main(["convert", "--to_hf", str(back), "--checkpoint", str(out)]) == 0
  again = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
  tokens = [[0, 5, 77, 120, 3, 9]]
  np.testing.assert_allclose(_logits(again, tokens), _logits(ref, tokens), atol=1e-5)


def test_convert_without_safetensors_is_a_user_error(hf_llama, tmp_path, capsys):
  (tmp_path / "config.json").write_text((hf_llama[0] / "config.json").read_text())
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  assert main(["convert", "--from_hf", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
  assert "safetensors" in capsys.readouterr().err


@pytest.fixture(scope="module")
def hf_t5(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                              num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                              decoder_start_token_id=0, attn_implementation="eager")
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # HF's init has unit norms and a std-1 head: make every tensor matter
    for p in model.parameters():
      p.copy_(torch.randn(p.shape) * (0.5 if p.ndim == 1 else p.shape[-1] ** -0.5) + (1.0 if p.ndim == 1 else 0.0))
  d = tmp_path_factory.mktemp("hf_t5")
  model.save_pretrained(d, safe_serialization=True)
  return d, model


def _t5_logits(model, enc, dec):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec)).logits.numpy()


def test_t5_import_export_round_trip(hf_t5, tmp_path, capsys):
  from itjax.core.model_dir import load_model_config
  from itjax.models.families import build_model
  from itjax.models.t5 import T5, T5Config

  src, ref = hf_t5
  out = tmp_path / "itjax_t5"
  assert main(["convert", "--from_hf", str(src), "--output", str(out)]) == 0
  cfg = load_model_config(str(out / "checkpoints" / "0"))
  assert isinstance(cfg, T5Config) and (cfg.emb_dim, cfg.num_decoder_layers, cfg.gated_mlp) == (32, 2, True)
  assert isinstance(build_model(cfg), T5)
  back = tmp_path / "hf_t5_again"
  assert main(["convert", "--to_hf", str(back), "--checkpoint", str(out)]) == 0
  assert "model_type=t5" in capsys.readouterr().out
  again = transformers.T5ForConditionalGeneration.from_pretrained(back, attn_implementation="eager").eval()
  enc, dec = [[5, 77, 20, 3, 9, 1]], [[0, 12, 40, 7]]
  np.testing.assert_allclose(_t5_logits(again, enc, dec), _t5_logits(ref, enc, dec), atol=1e-5)
  # A decoder-only family name is refused for a T5 model.
  assert main(["convert", "--to_hf", str(back), "--checkpoint", str(out), "--model_type", "qwen2"]) == 2
  assert "T5" in capsys.readouterr().err


def test_convert_unknown_model_type_is_a_user_error(tmp_path, capsys):
  (tmp_path / "config.json").write_text('{"model_type": "bart"}')
  assert main(["convert", "--from_hf", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
  assert "unsupported model_type 'bart'" in capsys.readouterr().err


def _copy_hf(src, dst):
  dst.mkdir()
  for f in src.iterdir():
    (dst / f.name).write_bytes(f.read_bytes())
  return dst


@pytest.mark.parametrize("damage, expected", [
    ("truncate_weights", ".safetensors: not a readable safetensors file"),
    ("garbage_weights", ".safetensors: not a readable safetensors file"),
    ("truncate_config", "config.json"),
    ("string_layers", "config.json: "),
    ("zero_heads", "config.json"),
    ("config_not_object", "config.json"),
])
def test_damaged_hf_directories_are_one_line_errors_naming_the_file(hf_llama, tmp_path, capsys, damage, expected):
  import json

  d = _copy_hf(hf_llama[0], tmp_path / "hf")
  (weights,), config = sorted(d.glob("*.safetensors")), d / "config.json"
  cfg = json.loads(config.read_text())
  if damage == "truncate_weights":
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
  elif damage == "garbage_weights":
    weights.write_bytes(b"\x00" * 100)
  elif damage == "truncate_config":
    config.write_text(config.read_text()[:40])
  elif damage == "string_layers":
    config.write_text(json.dumps({**cfg, "num_hidden_layers": "two"}))
  elif damage == "zero_heads":
    config.write_text(json.dumps({**cfg, "num_attention_heads": 0}))
  else:
    config.write_text("[1, 2]")
  assert main(["convert", "--from_hf", str(d), "--output", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith("itjax: error:")]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  assert expected in lines[0], lines[0]


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "model_config.json: unreadable"),
    ("wrong_type", "model_config.json: bad decoder config (DecoderConfig.emb_dim='32' must be an integer"),
    ("unknown_field", "model_config.json: unknown decoder config fields ['no_such']"),
    ("unknown_architecture", "model_config.json"),
])
def test_damaged_model_config_json_names_the_file(hf_llama, tmp_path, capsys, damage, expected):
  import json

  out = tmp_path / "out"
  assert main(["convert", "--from_hf", str(hf_llama[0]), "--output", str(out)]) == 0
  path = out / "model_config.json"
  blob = json.loads(path.read_text())
  if damage == "truncated":
    path.write_text(path.read_text()[:30])
  elif damage == "wrong_type":
    blob["config"]["emb_dim"] = "32"
    path.write_text(json.dumps(blob))
  elif damage == "unknown_field":
    blob["config"]["no_such"] = 1
    path.write_text(json.dumps(blob))
  else:
    blob["architecture"] = "mamba9"
    path.write_text(json.dumps(blob))
  capsys.readouterr()
  for argv in (["infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{out}'", "--input=hi"],
               ["convert", "--to_hf", str(tmp_path / "back"), "--checkpoint", str(out)]):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("itjax: error:")]
    assert len(lines) == 1 and "Traceback" not in err and expected in lines[0], err[-3000:]
