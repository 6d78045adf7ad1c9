"""Tokenizers as seqio vocabularies: a locally trained SentencePiece model and an HF BPE tokenizer.json.

Both are trained here on generated sentences (no downloads) and checked by round trips and by
running a seqio task, whose token ids must equal what the tokenizer library produces directly.
"""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf
import tokenizers
from tokenizer_files import sentencepiece_model
from tokenizers import decoders, models, pre_tokenizers, trainers

from itjax.data.hf_vocabulary import HFTokenizerVocabulary
from itjax.errors import UserError

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hum jazz tunes near old "
          "towers and bright rivers flow past green hills under calm skies").split()
SENTENCES = [" ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(4 + i % 6)) for i in range(300)]
TEXTS = ["the lazy fox hums near old rivers", "Wizards, jazz & towers!", "unseen words: zebra quokka 42"]


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
  """A tiny unigram SentencePiece model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
  return sentencepiece_model(tmp_path_factory.mktemp("sp") / "tiny.model", SENTENCES, 56)


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
  """A tiny byte-level BPE tokenizer.json; special tokens first, so pad 0, eos 1, unk 2."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "</s>", "<unk>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(SENTENCES, trainer)
  path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
  tok.save(str(path))
  return str(path)


def _task_ids(vocab: seqio.Vocabulary, texts: list[str], name: str) -> list[list[int]]:
  """Token ids of `texts` through a registered seqio task (tokenize preprocessor, EOS appended)."""
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
          {"targets": texts}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={"targets": seqio.Feature(vocab, add_eos=True)})
  try:
    ds = seqio.get_mixture_or_task(name).get_dataset({"targets": 512}, split="train", shuffle=False)
    return [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]
  finally:
    seqio.TaskRegistry.remove(name)


def test_sentencepiece_vocabulary_round_trips(sp_path):
  vocab = seqio.SentencePieceVocabulary(sp_path)
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (0, 1, 2, 56)
  proc = spm.SentencePieceProcessor(model_file=sp_path)
  for text in SENTENCES[:20] + TEXTS[:1]:
    ids = vocab.encode(text)
    assert ids == proc.encode(text) and vocab.decode(ids) == text
    assert vocab.decode_tf(vocab.encode_tf(tf.constant(text))).numpy().decode() == text
  assert _task_ids(vocab, TEXTS, "itjax_test_sp_task") == [proc.encode(t) + [1] for t in TEXTS]


def test_hf_tokenizer_vocabulary_matches_tokenizers(bpe_path):
  vocab = HFTokenizerVocabulary(bpe_path)
  tok = tokenizers.Tokenizer.from_file(bpe_path)
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.bos_id) == (0, 1, 2, None)
  assert vocab.vocab_size == tok.get_vocab_size() == 320
  for text in SENTENCES[:20] + TEXTS:
    ids = vocab.encode(text)
    assert list(ids) == tok.encode(text).ids and vocab.decode(ids) == text  # byte-level: lossless
    tf_ids = vocab.encode_tf(tf.constant(text))
    assert tf_ids.dtype == tf.int32 and tf_ids.numpy().tolist() == ids
    assert vocab.decode_tf(tf_ids).numpy().decode() == text
  # decode stops at EOS and skips padding; decode_tf works on batches.
  a, b = vocab.encode(TEXTS[0]), vocab.encode(TEXTS[1])
  assert vocab.decode(a + [1] + b) == TEXTS[0]
  batch = tf.constant([a + [1] + [5] * len(b), b + [0] * (len(a) + 1)])
  assert [s.decode() for s in vocab.decode_tf(batch).numpy()] == [TEXTS[0], TEXTS[1]]
  assert _task_ids(vocab, TEXTS, "itjax_test_bpe_task") == [tok.encode(t).ids + [1] for t in TEXTS]


def test_hf_special_tokens_from_tokenizer_config_and_arguments(bpe_path, tmp_path):
  data = json.loads(open(bpe_path).read())
  (tmp_path / "tokenizer.json").write_text(json.dumps(data))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<unk>"}}))
  vocab = HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"))
  assert (vocab.eos_id, vocab.pad_id) == (2, 0)
  assert HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"), eos_token="<pad>").eos_id == 0
  assert HFTokenizerVocabulary(bpe_path) == HFTokenizerVocabulary(bpe_path) != vocab
  assert HFTokenizerVocabulary(bpe_path, extra_ids=4).vocab_size == 324
  with pytest.raises(UserError, match="not in the vocabulary"):
    HFTokenizerVocabulary(bpe_path, eos_token="<|nope|>")
  with pytest.raises(UserError, match="not found"):
    HFTokenizerVocabulary(str(tmp_path / "missing.json"))

