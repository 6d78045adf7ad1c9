"""Which tokenizer a command uses: gin's `vocabulary.path`, else the model dir's, else UTF-8 bytes.

Resolved once per command at its edge and passed down; nothing reads it later.
"""

from __future__ import annotations

import gin

from itjax.core.tokenizer import Tokenizer, load_tokenizer


@gin.configurable
def vocabulary(path: str | None = None) -> str | None:
  """vocabulary.path: None = the model dir's tokenizer, or UTF-8 bytes without one (the offline default);
  else a SentencePiece model, an HF tokenizer.json, or a directory with one (e.g. a converted MODEL_DIR)."""
  return path


def configured_path() -> str | None:
  """`vocabulary.path` as gin has it (None when unset or gin is not configured)."""
  return vocabulary()


def tokenizer_path(model_dir_tokenizer: str | None) -> str | None:
  """The tokenizer file in effect: gin's vocabulary.path, else the model dir's (`model_dir_tokenizer`)."""
  return configured_path() or model_dir_tokenizer


def resolve_tokenizer(model_dir_tokenizer: str | None) -> Tokenizer:
  """The tokenizer in effect (see `tokenizer_path`); bytes when neither names one."""
  return load_tokenizer(tokenizer_path(model_dir_tokenizer))
