"""itjax's chat layout, as plain text: `System: ...`, `User: ...` then `Assistant:` and the reply.

`itjax.data.chat` renders training conversations with these labels (in TensorFlow), `itjax serve`
renders requests and `itjax data` teacher prompts with the same functions here (no TensorFlow).
Every assistant reply but the last ends with EOS, as in training.
"""

from __future__ import annotations

LABELS = {"system": ("System: ", "\n"), "user": ("User: ", "\nAssistant:\n"), "assistant": ("", "")}


def chat_pieces(messages: list[tuple[str, str]]) -> list[tuple[str, bool]]:
  """(text, EOS follows) per (role, content) turn, labeled as training conversations are."""
  turns = [(r, c) for r, c in messages if r != "system" or c.strip()]  # empty system prompts are left out
  return [(LABELS[r][0] + c + LABELS[r][1], r == "assistant" and i < len(turns) - 1) for i, (r, c) in enumerate(turns)]


def chat_text(messages: list[tuple[str, str]]) -> str:
  """The chat prompt as text (EOS shown as a line break, as in `inputs_pretokenized`), for text-only endpoints."""
  return "".join(text + ("\n" if eos else "") for text, eos in chat_pieces(messages))


def chat_tokens(messages: list[tuple[str, str]], encode, eos_id: int) -> list[int]:
  """The chat prompt as token ids: every earlier assistant reply ends with EOS, as in training."""
  out: list[int] = []
  for text, eos in chat_pieces(messages):
    out += encode(text) + ([eos_id] if eos else [])
  return out
