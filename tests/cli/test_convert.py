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
