"""The vocabulary tasks tokenize with: bytes by default, or a model's tokenizer chosen in gin.

Tasks are registered at import, before gin is parsed, so their output features
hold `TASK_VOCABULARY`, a `seqio.Vocabulary` that forwards every call to the
vocabulary configured when data is actually read (`vocabulary.path`). One
setting thus retokenizes the whole registry (procedural, FLAN, JSONL tasks) for
a pretrained model, as T5X users set their SentencePiece model in gin.
`itjax convert` copies an HF model's tokenizer files into its MODEL_DIR, and
`itjax eval` / `infer` / `serve` use them when `vocabulary.path` is not set.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Iterable, Sequence

import seqio
import tensorflow as tf

from itjax.core import vocabulary as core_vocabulary
from itjax.errors import UserError

log = logging.getLogger("itjax")
# Tokenizer files `itjax convert` copies between HF directories and MODEL_DIRs, in order of preference.
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model")
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
_override: dict[str, str] = {}  # {"path": tokenizer of the model dir in use}


@functools.cache
def load_vocabulary(path: str | None) -> seqio.Vocabulary:
  """bytes (None), a SentencePiece `.model`, an HF `tokenizer.json`, or a directory holding one of them."""
  if not path:
    return seqio.ByteVocabulary()
  if os.path.isdir(path):
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(path, name)):
        return load_vocabulary(os.path.join(path, name))
    raise UserError(f"vocabulary.path={path!r}: no {' / '.join(TOKENIZER_FILES)} in that directory")
  if not os.path.exists(path):
    raise UserError(f"vocabulary.path={path!r}: no such file")
  if path.endswith(".json"):
    from itjax.models.vocabularies import HFTokenizerVocabulary

    return HFTokenizerVocabulary(path)
  return seqio.SentencePieceVocabulary(path)


def model_dir_tokenizer(model_dir: str) -> str | None:
  """The tokenizer file `itjax convert` stored in a MODEL_DIR, if any."""
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(model_dir, name)):
      return os.path.join(model_dir, name)
  return None


def vocabulary(path: str | None = None) -> seqio.Vocabulary:
  """The vocabulary of a tokenizer path (None: UTF-8 bytes)."""
  return load_vocabulary(path)


def configured_path() -> str | None:
  """`vocabulary.path` as gin has it (None when unset)."""
  return core_vocabulary.configured_path()


def use_model_dir_vocabulary(model_dir: str | None) -> None:
  """Train from / eval / infer / serve a MODEL_DIR: its tokenizer, unless `vocabulary.path` is set in gin.

  Called at the start of each such command (None: no model dir), so nothing carries over between runs.
  """
  _override.pop("path", None)
  found = model_dir_tokenizer(model_dir) if model_dir else None
  if found and configured_path() is None:
    log.info("vocabulary: %s (from the model dir)", found)
    _override["path"] = found


def default_vocabulary() -> seqio.Vocabulary:
  """The vocabulary in effect now: a model dir's (see `use_model_dir_vocabulary`), else gin's."""
  path = _override.get("path")
  return load_vocabulary(path or configured_path())


def active_path() -> str | None:
  """The tokenizer file in effect (None for bytes)."""
  path = _override.get("path") or configured_path()
  if path and os.path.isdir(path):
    path = model_dir_tokenizer(path)
  return path


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


class TaskVocabulary(seqio.Vocabulary):
  """Forwards to `default_vocabulary()` at each call, so registered tasks follow the gin setting."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def current(self) -> seqio.Vocabulary:
    return default_vocabulary()

  @property
  def eos_id(self) -> int | None:
    return self.current.eos_id

  @property
  def pad_id(self) -> int:
    return self.current.pad_id

  @property
  def bos_id(self) -> int | None:
    return self.current.bos_id

  @property
  def unk_id(self) -> int | None:
    return self.current.unk_id

  @property
  def vocab_size(self) -> int:
    return self.current.vocab_size

  @property
  def _base_vocab_size(self) -> int:
    return self.current.vocab_size

  def _encode(self, s: str) -> Sequence[int]:
    return self.current.encode(s)

  def _decode(self, ids: Iterable[int]) -> str:
    return self.current.decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.current.encode_tf(s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self.current.decode_tf(ids)

  def __eq__(self, other) -> bool:
    return isinstance(other, TaskVocabulary)

  def __hash__(self) -> int:
    return hash(TaskVocabulary)


TASK_VOCABULARY = TaskVocabulary()


def check_vocabulary_fits(vocab_size: int, what: str = "the model", eos_id: int | None = None) -> None:
  """A clear error when the tokenizer has ids the model's embedding cannot hold, or (given the model's
  `eos_id`, which ends an encoder's inputs) another EOS."""
  v = default_vocabulary()
  if v.vocab_size > vocab_size:
    raise UserError(f"the vocabulary has {v.vocab_size} ids but {what} has vocab_size={vocab_size}: set "
                    "vocabulary.path to the model's tokenizer (or a larger vocab_size)")
  if eos_id is not None and v.eos_id != eos_id:
    raise UserError(f"the vocabulary's EOS is id {v.eos_id} but {what} has eos_id={eos_id}: set vocabulary.path "
                    "to the model's tokenizer (or the config's eos_id)")
