"""The seqio vocabulary task data is read with, resolved once per command and passed down.

Tasks register with UTF-8 bytes (`REGISTERED`: procedural, FLAN and JSONL tasks alike); a command
resolves its tokenizer once (gin's `vocabulary.path`, else the model dir's tokenizer files, else
bytes: `itjax.core.vocabulary`) and reads every task through `with_vocabulary(task, vocab)`, so one
setting retokenizes the whole registry for a pretrained model, as T5X users set their SentencePiece
model in gin. `itjax convert` copies an HF model's tokenizer files into its MODEL_DIR, and
`itjax train` (from INITIAL_CHECKPOINT_PATH), eval, infer and serve use them when `vocabulary.path`
is not set.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import seqio

from itjax.core import vocabulary as core_vocabulary
from itjax.core.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer
from itjax.data.hf_vocabulary import HFTokenizerVocabulary
from itjax.errors import UserError

REGISTERED = seqio.ByteVocabulary()  # what tasks register with; runs read them with their own vocabulary


@functools.cache
def load_vocabulary(path: str | None) -> seqio.Vocabulary:
  """bytes (None), a SentencePiece `.model`, an HF `tokenizer.json`, or a directory holding one of them."""
  tokenizer = load_tokenizer(path)  # finds the file in a directory; one-line errors for missing files
  if isinstance(tokenizer, HFTokenizer):
    return HFTokenizerVocabulary(tokenizer.path)
  if isinstance(tokenizer, SentencePieceTokenizer):
    return seqio.SentencePieceVocabulary(tokenizer.path)
  return REGISTERED


def run_vocabulary(model_dir_tokenizer: str | None = None) -> seqio.Vocabulary:
  """The vocabulary of a command: gin's vocabulary.path, else `model_dir_tokenizer`, else bytes."""
  return load_vocabulary(core_vocabulary.tokenizer_path(model_dir_tokenizer))


def with_vocabulary(task: seqio.Task, vocab: seqio.Vocabulary) -> seqio.Task:
  """`task` reading (tokenizing, EOS) with `vocab`: itself when it already does, else a copy (never registered)."""
  features = task.output_features
  if all(f.vocabulary == vocab for f in features.values()):
    return task
  out = copy.copy(task)  # the same source, preprocessors and metadata (InstructionTask.info, skip counters)
  # seqio.Task keeps its features in `_output_features`; the tokenize preprocessor reads them from there.
  out._output_features = {k: dataclasses.replace(f, vocabulary=vocab) for k, f in features.items()}  # noqa: SLF001
  return out


def check_vocabulary_fits(vocab: seqio.Vocabulary, vocab_size: int, what: str = "the model",
                          eos_id: int | None = None) -> None:
  """A clear error when the tokenizer has ids the model's embedding cannot hold, or (given the model's
  `eos_id`, which ends an encoder's inputs) another EOS."""
  if vocab.vocab_size > vocab_size:
    raise UserError(f"the vocabulary has {vocab.vocab_size} ids but {what} has vocab_size={vocab_size}: set "
                    "vocabulary.path to the model's tokenizer (or a larger vocab_size)")
  if eos_id is not None and vocab.eos_id != eos_id:
    raise UserError(f"the vocabulary's EOS is id {vocab.eos_id} but {what} has eos_id={eos_id}: set vocabulary.path "
                    "to the model's tokenizer (or the config's eos_id)")
