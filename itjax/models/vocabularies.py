"""Hugging Face fast tokenizers (`tokenizer.json`) as `seqio.Vocabulary`, for tasks and decoding.

SentencePiece models need no adapter: use `seqio.SentencePieceVocabulary(path)`. Any tokenizer that
`tokenizers.Tokenizer.from_file` reads (BPE, WordPiece, Unigram, byte-level) becomes a vocabulary
here: `encode` never adds special tokens (seqio appends EOS itself), `decode` skips special tokens,
and the TF versions wrap the same Python calls in `tf.numpy_function`, so a seqio pipeline
tokenizes exactly as `tokenizers` does (they run on the host and are not serializable into graphs).

Special ids come from, in order: explicit arguments, a `tokenizer_config.json` beside the file, and
well-known token strings among the tokenizer's special tokens. Note seqio pads with 0 whatever
`pad_id` says; itjax models mask padding by segment id, so the value of padding does not matter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from itjax.errors import UserError

# Token strings commonly used for each role, most specific first.
_KNOWN = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>"),
    "eos": ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "[SEP]"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]"),
}


def _config_tokens(path: str) -> dict[str, str]:
  """Role -> token string from a tokenizer_config.json next to tokenizer.json (HF repos have one)."""
  config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
  if not os.path.exists(config_path):
    return {}
  try:
    with open(config_path) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return {}
  out = {}
  for role in _KNOWN:
    value = config.get(f"{role}_token")
    if isinstance(value, dict):  # {"content": "</s>", ...} in older files
      value = value.get("content")
    if isinstance(value, str):
      out[role] = value
  return out


def _as_str(x) -> str:
  """A numpy_function string argument (bytes, or a 0-d object array of bytes) as str."""
  x = x.item() if isinstance(x, np.ndarray) else x
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class HFTokenizerVocabulary(seqio.Vocabulary):
  """A `tokenizers` fast tokenizer (tokenizer.json) as a seqio.Vocabulary."""

  def __init__(self, path: str, extra_ids: int = 0, *, pad_token: str | None = None, eos_token: str | None = None,
               unk_token: str | None = None, bos_token: str | None = None):
    if not os.path.exists(path):
      raise UserError(f"tokenizer file {path!r} not found (expected an HF tokenizer.json)")
    try:
      self._tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises plain Exceptions for malformed files
      raise UserError(f"{path}: not a readable HF tokenizer.json ({e})") from None
    self._path = os.path.abspath(path)
    explicit = {"pad": pad_token, "eos": eos_token, "unk": unk_token, "bos": bos_token}
    from_config = _config_tokens(path)
    specials = {t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special}
    self._ids: dict[str, int | None] = {}
    for role, known in _KNOWN.items():
      token = explicit[role] or from_config.get(role)
      if token is None:
        token = next((t for t in known if t in specials), None)
      if token is None and role == "unk":
        token = getattr(self._tokenizer.model, "unk_token", None)
      token_id = None if token is None else self._tokenizer.token_to_id(token)
      if token is not None and token_id is None and explicit[role]:
        raise UserError(f"{path}: {role}_token {token!r} is not in the vocabulary")
      self._ids[role] = token_id
    super().__init__(extra_ids=extra_ids)

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self._tokenizer

  @property
  def pad_id(self) -> int:
    pad = self._ids["pad"]
    return seqio.vocabularies.PAD_ID if pad is None else pad

  @property
  def eos_id(self) -> int | None:
    return self._ids["eos"]

  @property
  def unk_id(self) -> int | None:
    return self._ids["unk"]

  @property
  def bos_id(self) -> int | None:
    return self._ids["bos"]

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids]
    if self._ids["pad"] is not None:  # without a pad token, id 0 is an ordinary token
      ids = [i for i in ids if i != self._ids["pad"]]
    return self._tokenizer.decode(ids, skip_special_tokens=True)

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
    return (isinstance(other, HFTokenizerVocabulary) and self._path == other._path
            and self.extra_ids == other.extra_ids and self._ids == other._ids)

  def __hash__(self) -> int:
    return hash((self._path, self.extra_ids))

  def __str__(self) -> str:
    return (f"HFTokenizerVocabulary({self._path}, vocab_size={self.vocab_size}, pad={self.pad_id}, eos={self.eos_id}, "
            f"unk={self.unk_id})")
