"""Tiny tokenizer files the tests train locally (no download)."""

from __future__ import annotations

import io
import pathlib

import sentencepiece as spm

T5_IDS = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}  # T5's special ids: pad 0, eos 1, unk 2, no bos


def sentencepiece_model(path: pathlib.Path, sentences: list[str], vocab_size: int, **ids: int) -> str:
  """Trains a unigram SentencePiece model on `sentences` (special ids: T5's unless given) and writes it to `path`."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
                                 model_type="unigram", character_coverage=1.0, minloglevel=2, **(ids or T5_IDS))
  path.write_bytes(model.getvalue())
  return str(path)
