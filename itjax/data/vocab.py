"""Vocabularies (seqio.Vocabulary): bytes for the offline default."""

from __future__ import annotations

import functools

import seqio


@functools.cache
def default_vocabulary() -> seqio.Vocabulary:
  """UTF-8 bytes (pad 0, eos 1, unk 2, bytes from 3): needs no training or download."""
  return seqio.ByteVocabulary()
