"""Choosing the tokenizer: gin's vocabulary.path retokenizes registered tasks; model dirs carry theirs."""

import os

import gin
import pytest
import seqio
import tokenizers
import torch
import transformers
from tokenizer_files import sentencepiece_model
from tokenizers import decoders, models, pre_tokenizers, trainers

import itjax_tasks.procedural  # noqa: F401
from itjax.cli import main
from itjax.core.model_dir import ModelDir
from itjax.data import vocab as vocab_lib
from itjax.data.hf_vocabulary import HFTokenizerVocabulary

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = [f"add {i} and {i + 3} then answer with the sum of the numbers" for i in range(200)]


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
  return sentencepiece_model(tmp_path_factory.mktemp("sp") / "spiece.model", TEXTS, 40)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny HF Llama whose directory holds a 300-token BPE tokenizer.json."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                     show_progress=False))
  d = tmp_path_factory.mktemp("hf")
  tok.save(str(d / "tokenizer.json"))
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)
  transformers.LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
  return d


@pytest.fixture(autouse=True)
def _reset():
  gin.clear_config()  # also unlocks: an earlier test's `itjax.config.parse` leaves the config finalized
  yield
  gin.clear_config()


def _targets(task: str) -> list[list[int]]:
  """A task's validation targets as the run reads them: with the vocabulary resolved from gin."""
  ds = vocab_lib.with_vocabulary(seqio.get_mixture_or_task(task), vocab_lib.run_vocabulary()).get_dataset(
      {"inputs": 256, "targets": 64}, split="validation", shuffle=False)
  return [ex["targets"].tolist() for ex in ds.take(3).as_numpy_iterator()], \
         [ex["targets_pretokenized"].decode() for ex in ds.take(3).as_numpy_iterator()]


def test_gin_vocabulary_path_retokenizes_registered_tasks(sp_path):
  byte_ids, texts = _targets("proc_add_zs_noopt")
  assert byte_ids[0] == list(seqio.ByteVocabulary().encode(texts[0])) + [1]
  gin.parse_config([f"vocabulary.path = {sp_path!r}"])
  sp_ids, _ = _targets("proc_add_zs_noopt")
  sp = seqio.SentencePieceVocabulary(sp_path)
  assert sp_ids == [list(sp.encode(t)) + [1] for t in texts] and sp_ids != byte_ids


def test_missing_vocabulary_file_is_a_user_error(tmp_path):
  with pytest.raises(vocab_lib.UserError, match="vocabulary.path=.*no such file"):
    vocab_lib.load_vocabulary(str(tmp_path / "nope.model"))
  with pytest.raises(vocab_lib.UserError, match="no tokenizer.json / spiece.model / tokenizer.model"):
    vocab_lib.load_vocabulary(str(tmp_path))


def test_converted_model_dir_carries_its_tokenizer(hf_dir, tmp_path):
  out = tmp_path / "imported"
  assert main(["convert", "--from_hf", str(hf_dir), "--output", str(out)]) == 0
  assert (out / "tokenizer.json").exists()
  assert main(["infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH={out}", "--gin.infer.max_new_tokens=2",
               "--input", "add 2 and 5"]) == 0
  active = vocab_lib.run_vocabulary(ModelDir.open(str(out)).tokenizer_file)  # what infer read it with
  assert isinstance(active, HFTokenizerVocabulary) and active.vocab_size == 300
  # ... and exports it back beside the weights, so AutoTokenizer loads the same tokenizer.
  back = tmp_path / "hf_again"
  assert main(["convert", "--to_hf", str(back), "--checkpoint", str(out)]) == 0
  assert (back / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()


def test_fine_tuning_uses_and_stores_the_initial_checkpoint_tokenizer(hf_dir, tmp_path):
  out = tmp_path / "imported"
  assert main(["convert", "--from_hf", str(hf_dir), "--output", str(out)]) == 0
  run = tmp_path / "run"
  assert main(["train", f"--gin_file={REPO}/tests/tiny.gin", f"--model_dir={run}", "--gin.EVAL_MIXTURES=None",
               "--gin.TRAIN_STEPS=1", f"--gin.INITIAL_CHECKPOINT_PATH='{out}/checkpoints/0'",
               "--gin.DecoderConfig.vocab_size=300", "--gin.DecoderConfig.emb_dim=32",
               "--gin.DecoderConfig.num_heads=4", "--gin.DecoderConfig.num_kv_heads=2",
               "--gin.DecoderConfig.head_dim=8", "--gin.DecoderConfig.tie_embeddings=False"]) == 0
  assert (run / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()


def test_a_vocabulary_larger_than_the_model_is_refused(hf_dir, tmp_path, capsys):
  assert main(["train", f"--gin_file={REPO}/tests/tiny.gin", f"--model_dir={tmp_path}", "--gin.EVAL_MIXTURES=None",
               f"--gin.vocabulary.path='{hf_dir}/tokenizer.json'"]) == 2
  assert "the vocabulary has 300 ids but MODEL has vocab_size=259" in capsys.readouterr().err
