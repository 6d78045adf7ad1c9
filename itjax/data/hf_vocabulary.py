"""Hugging Face fast tokenizers (`tokenizer.json`) as `seqio.Vocabulary`, for tasks and decoding.

SentencePiece models need no adapter: `seqio.SentencePieceVocabulary(path)`. Any tokenizer that
`tokenizers.Tokenizer.from_file` reads (BPE, WordPiece, Unigram, byte-level) becomes a vocabulary
here, a thin seqio face of `itjax.core.tokenizer.HFTokenizer` (which also finds its special ids):
`encode` never adds special tokens (seqio appends EOS itself), `decode` skips special tokens, and
the TF versions wrap the same Python calls in `tf.numpy_function`, so a seqio pipeline tokenizes
exactly as `tokenizers` does (they run on the host and are not serializable into graphs). seqio
pads with 0 whatever `pad_id` says; itjax models mask padding by segment id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from itjax.core.tokenizer import HFTokenizer


def _as_str(x) -> str:
  """A numpy_function string argument (bytes, or a 0-d object array of bytes) as str."""
  x = x.item() if isinstance(x, np.ndarray) else x
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class HFTokenizerVocabulary(seqio.Vocabulary):
  """A `tokenizers` fast tokenizer (tokenizer.json) as a seqio.Vocabulary."""

  def __init__(self, path: str, extra_ids: int = 0, *, pad_token: str | None = None, eos_token: str | None = None,
               unk_token: str | None = None, bos_token: str | None = None):
    self._hf = HFTokenizer(path, pad_token=pad_token, eos_token=eos_token, unk_token=unk_token, bos_token=bos_token)
    super().__init__(extra_ids=extra_ids)

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self._hf.tokenizer

  @property
  def pad_id(self) -> int:
    return self._hf.pad_id

  @property
  def eos_id(self) -> int | None:
    return self._hf.eos_id

  @property
  def unk_id(self) -> int | None:
    return self._hf.unk_id

  @property
  def bos_id(self) -> int | None:
    return self._hf.bos_id

  @property
  def _base_vocab_size(self) -> int:
    return self._hf.vocab_size

  def _encode(self, s: str) -> Sequence[int]:
    return self._hf._encode(s)

  def _decode(self, ids: Iterable[int]) -> str:
    return self._hf._decode([int(i) for i in ids])

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 ids [length]; [n] strings -> RaggedTensor [n, None]."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(lambda x: np.asarray(self._encode(_as_str(x)), np.int32), [s], tf.int32,
                              stateful=False)
      ids.set_shape([None])
      return ids
    return tf.map_fn(self._encode_tf, s, fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """ids [..., length] -> strings [...] (scalar for one sequence)."""
    ids = tf.convert_to_tensor(ids)

    def decode(x: np.ndarray) -> np.ndarray:
      flat = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
      out = np.array([self._decode(row.tolist()).encode("utf-8") for row in flat], dtype=object)
      return out.reshape(x.shape[:-1])

    out = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other) -> bool:
    return isinstance(other, HFTokenizerVocabulary) and self._hf == other._hf and self.extra_ids == other.extra_ids

  def __hash__(self) -> int:
    return hash((self._hf, self.extra_ids))

  def __str__(self) -> str:
    return (f"HFTokenizerVocabulary({self._hf.path}, vocab_size={self.vocab_size}, pad={self.pad_id}, "
            f"eos={self.eos_id}, unk={self.unk_id})")
