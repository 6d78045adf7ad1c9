"""Plain tokenizers (bytes, SentencePiece, HF `tokenizer.json`) that import neither TensorFlow nor seqio.

Commands that read no task data (`itjax convert`, `serve`, `infer`, `compile`) tokenize with these, so they
start without TensorFlow. Data pipelines keep using seqio vocabularies (`itjax.data.vocab`); for the same file
a `Tokenizer` here gives exactly the same ids, texts and special ids as the vocabulary the data layer loads:

- `ByteTokenizer` is `seqio.ByteVocabulary()`: id = UTF-8 byte + 3, with pad 0, EOS 1, unk 2 and no BOS.
- `SentencePieceTokenizer(path)` is `seqio.SentencePieceVocabulary(path)` (no extra ids): the model's own
  EOS / unk / BOS ids (-1 when the model has none, as sentencepiece reports them), but pad 0 whatever the model
  says, as seqio pads with 0.
- `HFTokenizer(path)` is `itjax.data.hf_vocabulary.HFTokenizerVocabulary(path)`: `encode` adds no special
  tokens (seqio appends EOS itself) and `decode` skips special tokens and padding.

`decode` follows seqio's `Vocabulary.decode`: ids >= vocab_size become unk (when there is one), everything
after the first EOS is dropped (the EOS itself goes to the backend, which renders it as nothing), then the
backend decodes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Iterable

import sentencepiece as spm
import tokenizers

from itjax.errors import UserError

# Tokenizer files `itjax convert` copies between HF directories and MODEL_DIRs, in order of preference.
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model")
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
PAD_ID = 0  # seqio pads with 0 whatever a tokenizer's own pad id is

# Token strings commonly used for each role, most specific first.
_KNOWN = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>"),
    "eos": ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "[SEP]"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]"),
}


class Tokenizer:
  """Text <-> ids, with seqio's decode semantics; subclasses implement `_encode`, `_decode` and the ids."""

  @property
  def path(self) -> str | None:
    """The tokenizer file (absolute), None for bytes."""
    return None

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  @property
  def eos_id(self) -> int | None:
    raise NotImplementedError

  @property
  def unk_id(self) -> int | None:
    raise NotImplementedError

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int | None:
    return None

  def _encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def _decode(self, ids: list[int]) -> str:
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    """The ids of `text`, without EOS or any other special token."""
    return [int(i) for i in self._encode(text)]

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids` up to the first EOS; ids >= vocab_size read as unk (as `seqio.Vocabulary.decode`)."""
    ids = [int(i) for i in ids]
    if self.unk_id is not None:
      ids = [self.unk_id if i >= self.vocab_size else i for i in ids]
    if self.eos_id is not None and self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id) + 1]
    return self._decode(ids)

  def _key(self) -> tuple:
    return (type(self).__name__, self.path, self.pad_id, self.eos_id, self.unk_id, self.bos_id)

  def __eq__(self, other) -> bool:
    return isinstance(other, Tokenizer) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def __repr__(self) -> str:
    where = f"{self.path}, " if self.path else ""
    return (f"{type(self).__name__}({where}vocab_size={self.vocab_size}, pad={self.pad_id}, eos={self.eos_id}, "
            f"unk={self.unk_id}, bos={self.bos_id})")


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as `seqio.ByteVocabulary()` (ByT5's): pad 0, EOS 1, unk 2, then byte b as id b + 3."""

  _SPECIALS = 3
  _BYTES = 256

  @property
  def vocab_size(self) -> int:
    return self._SPECIALS + self._BYTES

  @property
  def eos_id(self) -> int:
    return 1

  @property
  def unk_id(self) -> int:
    return 2

  def _encode(self, text: str) -> list[int]:
    text = text.decode() if isinstance(text, bytes) else text
    return [b + self._SPECIALS for b in text.encode("utf-8")]

  def _decode(self, ids: list[int]) -> str:
    # Special and out-of-range ids leave no trace; invalid UTF-8 (e.g. a cut multi-byte character) is dropped.
    data = bytes(i - self._SPECIALS for i in ids if self._SPECIALS <= i < self._SPECIALS + self._BYTES)
    return data.decode("utf-8", errors="ignore")


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece `.model` as `seqio.SentencePieceVocabulary(path)` with no extra ids."""

  def __init__(self, path: str):
    if not os.path.exists(path):
      raise UserError(f"tokenizer file {path!r} not found (expected a SentencePiece model)")
    self._path = os.path.abspath(path)
    self._sp = spm.SentencePieceProcessor()
    try:
      with open(path, "rb") as f:
        self._sp.LoadFromSerializedProto(f.read())
    except Exception as e:  # sentencepiece raises RuntimeError / OSError for a malformed model
      raise UserError(f"{path}: not a readable SentencePiece model ({e})") from None

  @property
  def processor(self) -> spm.SentencePieceProcessor:
    return self._sp

  @property
  def path(self) -> str:
    return self._path

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  def _encode(self, text: str) -> list[int]:
    return self._sp.EncodeAsIds(text)

  def _decode(self, ids: list[int]) -> str:
    return self._sp.DecodeIds(ids)


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
  if not isinstance(config, dict):
    return {}
  out = {}
  for role in _KNOWN:
    value = config.get(f"{role}_token")
    if isinstance(value, dict):  # {"content": "</s>", ...} in older files
      value = value.get("content")
    if isinstance(value, str):
      out[role] = value
  return out


class HFTokenizer(Tokenizer):
  """A Hugging Face fast tokenizer (`tokenizer.json`) as `HFTokenizerVocabulary(path)` gives it to seqio.

  Special ids come from, in order: explicit ids or token strings, a `tokenizer_config.json` beside the file,
  and well-known token strings among the tokenizer's special tokens (for unk, then the model's unk token).
  """

  def __init__(self, path: str, pad_id: int | None = None, eos_id: int | None = None, unk_id: int | None = None,
               bos_id: int | None = None, *, pad_token: str | None = None, eos_token: str | None = None,
               unk_token: str | None = None, bos_token: str | None = None):
    if not os.path.exists(path):
      raise UserError(f"tokenizer file {path!r} not found (expected an HF tokenizer.json)")
    try:
      self._tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises plain Exceptions for malformed files
      raise UserError(f"{path}: not a readable HF tokenizer.json ({e})") from None
    self._path = os.path.abspath(path)
    explicit_ids = {"pad": pad_id, "eos": eos_id, "unk": unk_id, "bos": bos_id}
    explicit = {"pad": pad_token, "eos": eos_token, "unk": unk_token, "bos": bos_token}
    from_config = _config_tokens(path)
    specials = {t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special}
    size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    self._ids: dict[str, int | None] = {}
    for role, known in _KNOWN.items():
      if explicit_ids[role] is not None:
        if explicit[role] is not None:
          raise UserError(f"{path}: give {role}_id or {role}_token, not both")
        if not 0 <= explicit_ids[role] < size:
          raise UserError(f"{path}: {role}_id={explicit_ids[role]} is outside the vocabulary (0..{size - 1})")
        self._ids[role] = int(explicit_ids[role])
        continue
      token = explicit[role] or from_config.get(role)
      if token is None:
        token = next((t for t in known if t in specials), None)
      if token is None and role == "unk":
        token = getattr(self._tokenizer.model, "unk_token", None)
      token_id = None if token is None else self._tokenizer.token_to_id(token)
      if token is not None and token_id is None and explicit[role]:
        raise UserError(f"{path}: {role}_token {token!r} is not in the vocabulary")
      self._ids[role] = token_id

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self._tokenizer

  @property
  def path(self) -> str:
    return self._path

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    pad = self._ids["pad"]
    return PAD_ID if pad is None else pad

  @property
  def eos_id(self) -> int | None:
    return self._ids["eos"]

  @property
  def unk_id(self) -> int | None:
    return self._ids["unk"]

  @property
  def bos_id(self) -> int | None:
    return self._ids["bos"]

  def _encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def _decode(self, ids: list[int]) -> str:
    if self._ids["pad"] is not None:  # without a pad token, id 0 is an ordinary token
      ids = [i for i in ids if i != self._ids["pad"]]
    return self._tokenizer.decode(ids, skip_special_tokens=True)


@functools.cache
def load_tokenizer(path: str | None) -> Tokenizer:
  """bytes (None), a SentencePiece `.model`, an HF `tokenizer.json`, or a directory holding one of them."""
  if not path:
    return ByteTokenizer()
  if os.path.isdir(path):
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(path, name)):
        return load_tokenizer(os.path.join(path, name))
    raise UserError(f"vocabulary.path={path!r}: no {' / '.join(TOKENIZER_FILES)} in that directory")
  if not os.path.exists(path):
    raise UserError(f"vocabulary.path={path!r}: no such file")
  if path.endswith(".json"):
    return HFTokenizer(path)
  return SentencePieceTokenizer(path)


def model_dir_tokenizer(model_dir: str) -> str | None:
  """The tokenizer file `itjax convert` stored in a MODEL_DIR, if any."""
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(model_dir, name)):
      return os.path.join(model_dir, name)
  return None


def copy_tokenizer_files(src_dir: str, dst_dir: str, main_file: str | None = None) -> list[str]:
  """Copies the tokenizer files (`main_file`, else every known one) and their side files; returns the names."""
  names = [os.path.basename(main_file)] if main_file else [n for n in TOKENIZER_FILES
                                                             if os.path.exists(os.path.join(src_dir, n))]
  names += [n for n in TOKENIZER_SIDE_FILES if os.path.exists(os.path.join(src_dir, n))]
  os.makedirs(dst_dir, exist_ok=True)
  for n in names:
    if os.path.abspath(os.path.join(src_dir, n)) != os.path.abspath(os.path.join(dst_dir, n)):
      shutil.copyfile(os.path.join(src_dir, n), os.path.join(dst_dir, n))
  return names
