"""itjax.core.tokenizer: the same ids, texts and special ids as the seqio vocabularies, without TF or seqio.

A tiny SentencePiece model and a byte-level BPE tokenizer.json are trained here (no downloads); each plain
tokenizer is compared with the seqio vocabulary the data layer loads for the same file.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import sentencepiece as spm
import seqio
import tokenizers
from tokenizer_files import sentencepiece_model
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from itjax.core import tokenizer as tok_lib
from itjax.data.hf_vocabulary import HFTokenizerVocabulary
from itjax.errors import UserError

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hum jazz tunes near old "
          "towers and bright rivers flow past green hills under calm skies").split()
SENTENCES = [" ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(4 + i % 6)) for i in range(300)]
TEXTS = ["", " ", "the lazy fox hums near old rivers", "Wizards, jazz & towers!", "unseen words: zebra quokka 42",
         "naïve café — Zürich", "日本語のテキスト", "emoji 🦊🎷 and\ttabs\nnewlines", "  double  spaces  "]


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory) -> str:
  """A tiny unigram SentencePiece model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
  return sentencepiece_model(tmp_path_factory.mktemp("sp") / "spiece.model", SENTENCES, 56)


@pytest.fixture(scope="module")
def sp_bos_path(tmp_path_factory) -> str:
  """A SentencePiece model with sentencepiece's own defaults (unk 0, bos 1, eos 2, no pad)."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES), model_writer=model, vocab_size=56,
                                 model_type="bpe", character_coverage=1.0, minloglevel=2)
  path = tmp_path_factory.mktemp("sp_bos") / "tokenizer.model"
  path.write_bytes(model.getvalue())
  return str(path)


def _bpe(specials: list[str], unk: str = "<unk>") -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE(unk_token=unk))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                         show_progress=False))
  return tok


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A Llama-like byte-level BPE tokenizer.json: specials not at 0/1/2, a BOS post-processor, an added token
  beyond the model's vocab (<|im_end|>, id 320), and a tokenizer_config.json naming EOS differently from what
  the well-known strings would pick (<|endoftext|>)."""
  d = tmp_path_factory.mktemp("hf")
  tok = _bpe(["<|x|>", "<s>", "<|endoftext|>", "<pad>", "<unk>"])
  tok.add_special_tokens(["<|im_end|>"])
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"},
                                                       "pad_token": "<pad>", "bos_token": "<s>"}))
  (d / "special_tokens_map.json").write_text("{}")
  return d


@pytest.fixture(scope="module")
def plain_bpe_path(tmp_path_factory) -> str:
  """A tokenizer.json with no config beside it: special ids come from well-known token strings, unk from the
  model's unk token (<oov>, which no well-known string names)."""
  d = tmp_path_factory.mktemp("bpe")
  _bpe(["<pad>", "</s>", "<oov>"], unk="<oov>").save(str(d / "tokenizer.json"))
  return str(d / "tokenizer.json")


def _special_ids(v) -> tuple:
  return (v.vocab_size, v.pad_id, v.eos_id, v.unk_id, v.bos_id)


def _assert_same(tok: tok_lib.Tokenizer, vocab: seqio.Vocabulary) -> None:
  """Same special ids, encodings and decodings (EOS mid-sequence, out-of-range ids, specials, padding)."""
  assert _special_ids(tok) == _special_ids(vocab)
  for text in TEXTS + SENTENCES[:10]:
    ids = tok.encode(text)
    assert ids == list(vocab.encode(text)), text
    assert all(type(i) is int for i in ids)
    assert tok.decode(ids) == vocab.decode(ids), text
  a, b = tok.encode(TEXTS[2]), tok.encode(TEXTS[5])
  n = tok.vocab_size
  specials = [i for i in (tok.pad_id, tok.unk_id, tok.bos_id) if i is not None and i >= 0]
  cases = [[], [tok.eos_id], a + [tok.eos_id] + b, a + [tok.eos_id, tok.eos_id] + b + [tok.eos_id],
           a + [n, n + 7, 10 ** 6] + b, [n] + a + [tok.eos_id, n], specials + a + specials + b,
           a + [tok.pad_id] * 5, [tok.pad_id] * 3 + a, b[:1] + b[2:]]
  for ids in cases:
    assert tok.decode(ids) == vocab.decode(ids), ids
  if tok.eos_id not in a + b:  # the cut after EOS matters
    assert tok.decode(a + [tok.eos_id] + b) == tok.decode(a + [tok.eos_id]) and tok.decode(a + b) != tok.decode(a)
  assert tok.decode(tuple(a)) == tok.decode(iter(a)) == vocab.decode(a)


def test_byte_tokenizer_matches_seqio_byte_vocabulary():
  tok, vocab = tok_lib.ByteTokenizer(), seqio.ByteVocabulary()
  _assert_same(tok, vocab)
  assert _special_ids(tok) == (259, 0, 1, 2, None) and tok.path is None
  assert tok.encode("aé") == [ord("a") + 3, 0xC3 + 3, 0xA9 + 3]
  # A cut multi-byte character and special / out-of-range ids leave no trace; nothing after EOS survives.
  cases = [[0xC3 + 3], [ord("a") + 3, 0xC3 + 3, ord("b") + 3], [0, 2, ord("a") + 3, 259, 300, 1, ord("b") + 3]]
  for ids in cases:
    assert tok.decode(ids) == vocab.decode(ids)
  assert tok.decode(cases[2]) == "a"


def test_sentencepiece_tokenizer_matches_seqio(sp_path, sp_bos_path):
  tok = tok_lib.SentencePieceTokenizer(sp_path)
  _assert_same(tok, seqio.SentencePieceVocabulary(sp_path))
  assert _special_ids(tok) == (56, 0, 1, 2, -1) and tok.path == os.path.abspath(sp_path)
  assert tok.decode(tok.encode("the fox") + [56]) == "the fox ⁇ "  # out of range -> unk, shown as sentencepiece does
  # sentencepiece's default ids (unk 0, bos 1, eos 2): seqio keeps the model's eos/unk/bos but pads with 0.
  tok = tok_lib.SentencePieceTokenizer(sp_bos_path)
  _assert_same(tok, seqio.SentencePieceVocabulary(sp_bos_path))
  assert _special_ids(tok)[1:] == (0, 2, 0, 1)


def test_hf_tokenizer_matches_hf_tokenizer_vocabulary(hf_dir, plain_bpe_path):
  path = str(hf_dir / "tokenizer.json")
  tok = tok_lib.HFTokenizer(path)
  _assert_same(tok, HFTokenizerVocabulary(path))
  assert _special_ids(tok) == (321, 3, 320, 4, 1) and tok.path == os.path.abspath(path)  # tokenizer_config.json
  raw = tokenizers.Tokenizer.from_file(path)
  for text in TEXTS:
    assert tok.encode(text) == raw.encode(text, add_special_tokens=False).ids != raw.encode(text).ids  # no BOS
    assert tok.decode(tok.encode(text)) == text  # byte-level BPE is lossless
  tok = tok_lib.HFTokenizer(plain_bpe_path)
  _assert_same(tok, HFTokenizerVocabulary(plain_bpe_path))
  assert _special_ids(tok)[1:] == (0, 1, 2, None)  # well-known strings; no bos among the specials
  # Ordinary tokens named as pad / EOS: decode drops that pad everywhere, but keeps the EOS's own text.
  kwargs = {"pad_token": "he", "eos_token": "dog"}  # "the dog" is t|he|Ġ|dog in this tiny vocabulary
  tok = tok_lib.HFTokenizer(path, **kwargs)
  _assert_same(tok, HFTokenizerVocabulary(path, **kwargs))
  assert tok.decode(tok.encode("the dog the fox")) == "t dog"
  assert (tok.pad_id, tok.eos_id) == (raw.token_to_id("he"), raw.token_to_id("dog"))


def test_hf_tokenizer_explicit_special_tokens_and_errors(hf_dir, plain_bpe_path, tmp_path):
  path = str(hf_dir / "tokenizer.json")
  for kwargs in ({"eos_token": "<|x|>"}, {"pad_token": "<unk>", "bos_token": "<|endoftext|>"}):
    tok = tok_lib.HFTokenizer(path, **kwargs)
    _assert_same(tok, HFTokenizerVocabulary(path, **kwargs))
  assert tok_lib.HFTokenizer(path, eos_token="<|x|>").eos_id == 0
  tok = tok_lib.HFTokenizer(path, eos_id=0, pad_id=4)
  assert (tok.eos_id, tok.pad_id, tok.unk_id, tok.bos_id) == (0, 4, 4, 1)
  assert tok == tok_lib.HFTokenizer(path, eos_token="<|x|>", pad_token="<unk>")
  assert tok.decode(tok.encode("the fox") + [0] + tok.encode("dog")) == "the fox"
  assert tok_lib.HFTokenizer(path) == tok_lib.HFTokenizer(path) != tok
  assert tok_lib.HFTokenizer(path) != tok_lib.HFTokenizer(plain_bpe_path)
  with pytest.raises(UserError, match="not in the vocabulary"):
    tok_lib.HFTokenizer(path, eos_token="<|nope|>")
  with pytest.raises(UserError, match="outside the vocabulary"):
    tok_lib.HFTokenizer(path, eos_id=10 ** 6)
  with pytest.raises(UserError, match="not both"):
    tok_lib.HFTokenizer(path, eos_id=0, eos_token="<s>")
  with pytest.raises(UserError, match="not found"):
    tok_lib.HFTokenizer(str(tmp_path / "missing.json"))
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(UserError, match="not a readable HF tokenizer.json"):
    tok_lib.HFTokenizer(str(tmp_path / "bad.json"))
  # A broken tokenizer_config.json is ignored, as HFTokenizerVocabulary ignores it.
  d = tmp_path / "broken_config"
  d.mkdir()
  (d / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text())
  (d / "tokenizer_config.json").write_text("[1, 2")
  tok = tok_lib.HFTokenizer(str(d / "tokenizer.json"))
  _assert_same(tok, HFTokenizerVocabulary(str(d / "tokenizer.json")))
  assert (tok.eos_id, tok.bos_id) == (2, 1)  # well-known strings instead: <|endoftext|>


def test_load_tokenizer(sp_path, hf_dir, tmp_path):
  assert isinstance(tok_lib.load_tokenizer(None), tok_lib.ByteTokenizer)
  assert tok_lib.load_tokenizer(None) is tok_lib.load_tokenizer(None)  # cached
  sp = tok_lib.load_tokenizer(sp_path)
  assert isinstance(sp, tok_lib.SentencePieceTokenizer) and sp is tok_lib.load_tokenizer(sp_path)
  hf = tok_lib.load_tokenizer(str(hf_dir))  # a directory: its tokenizer.json
  assert isinstance(hf, tok_lib.HFTokenizer) and hf.path == os.path.abspath(hf_dir / "tokenizer.json")
  assert tok_lib.load_tokenizer(os.path.dirname(sp_path)).path == sp.path  # spiece.model
  with pytest.raises(UserError, match="vocabulary.path=.*no such file"):
    tok_lib.load_tokenizer(str(tmp_path / "nope.model"))
  with pytest.raises(UserError, match="no tokenizer.json / spiece.model / tokenizer.model"):
    tok_lib.load_tokenizer(str(tmp_path))
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(UserError, match="not a readable SentencePiece model"):
    tok_lib.load_tokenizer(str(tmp_path / "junk.model"))
  # Errors are not cached: the file can appear later.
  (tmp_path / "spiece.model").write_bytes(open(sp_path, "rb").read())
  assert tok_lib.load_tokenizer(str(tmp_path)).encode("the fox") == sp.encode("the fox")


def test_model_dir_tokenizer_and_copy_tokenizer_files(hf_dir, sp_path, tmp_path):
  assert tok_lib.model_dir_tokenizer(str(hf_dir)) == os.path.join(str(hf_dir), "tokenizer.json")
  assert tok_lib.model_dir_tokenizer(str(tmp_path)) is None
  dst = tmp_path / "model_dir" / "nested"
  names = tok_lib.copy_tokenizer_files(str(hf_dir), str(dst))
  assert names == ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
  assert sorted(os.listdir(dst)) == sorted(names)
  for n in names:
    assert (dst / n).read_bytes() == (hf_dir / n).read_bytes()
  assert tok_lib.load_tokenizer(str(dst)).encode(TEXTS[3]) == tok_lib.HFTokenizer(str(hf_dir / "tokenizer.json")) \
      .encode(TEXTS[3])
  assert tok_lib.copy_tokenizer_files(str(dst), str(dst)) == names  # copying onto itself is a no-op
  # Only main_file (plus side files) when given; every known tokenizer file otherwise.
  src = tmp_path / "both"
  src.mkdir()
  (src / "tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
  (src / "tokenizer.model").write_bytes(open(sp_path, "rb").read())
  (src / "generation_config.json").write_text("{}")
  assert tok_lib.copy_tokenizer_files(str(src), str(tmp_path / "all")) == ["tokenizer.json", "tokenizer.model",
                                                                          "generation_config.json"]
  only = tok_lib.copy_tokenizer_files(str(src), str(tmp_path / "one"), main_file=str(src / "tokenizer.model"))
  assert only == ["tokenizer.model", "generation_config.json"]
  assert sorted(os.listdir(tmp_path / "one")) == sorted(only)
  assert isinstance(tok_lib.load_tokenizer(str(src)), tok_lib.HFTokenizer)  # tokenizer.json first
  assert tok_lib.model_dir_tokenizer(str(src)) == os.path.join(str(src), "tokenizer.json")
  os.remove(src / "tokenizer.json")
  assert tok_lib.model_dir_tokenizer(str(src)) == os.path.join(str(src), "tokenizer.model")


def test_import_pulls_in_neither_tensorflow_nor_seqio_nor_jax():
  code = ("import sys, itjax.core.tokenizer as t; t.load_tokenizer(None).encode('x'); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio', 'jax', 'tf_keras')))")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
         "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]", out.stdout
