"""The OpenAI wire format for `itjax serve`: request validation (HTTP 400 naming the parameter) and responses.

Supported: `/v1/completions` (prompt: a string, a list of strings, token ids or lists of token ids) and
`/v1/chat/completions` (messages with roles system/developer, user, assistant; string or text-part content), with
max_tokens (max_completion_tokens), temperature, top_p, top_k (as vLLM), n, stop, seed and stream. Chat messages
are laid out as itjax trains on chat data (`itjax.data.chat`): "System: ...\\n", "User: ...\\nAssistant:\\n", each
earlier assistant reply followed by EOS; the prompt ends with "Assistant:\\n".
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from itjax.data.chat_format import chat_tokens

MAX_N = 16
MAX_STOP = 4
DEFAULT_COMPLETION_TOKENS = 16  # as OpenAI's /v1/completions
DEFAULT_CHAT_TOKENS = 256
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
UNSUPPORTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
               "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
               "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"})}


class BadRequest(Exception):
  """A request the server rejects: HTTP `status` with OpenAI's error body naming `param`."""

  def __init__(self, message: str, param: str | None = None, status: int = 400,
               type_: str = "invalid_request_error", code: str | None = None):
    super().__init__(message)
    self.message, self.param, self.status, self.type, self.code = message, param, status, type_, code

  def body(self) -> dict[str, Any]:
    return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
  return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclasses.dataclass
class Request:
  """A validated request: prompts as token ids, and how to sample."""

  chat: bool
  model: str
  prompts: list[list[int]]
  n: int = 1
  max_tokens: int = DEFAULT_COMPLETION_TOKENS
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  seed: int | None = None
  stop: list[str] = dataclasses.field(default_factory=list)
  stream: bool = False
  include_usage: bool = False


def _number(body: Mapping, key: str, default: float, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False) -> Any:
  v = body.get(key)
  if v is None:
    return default
  if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
    raise BadRequest(f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", key)
  if v < lo or v > hi or (lo_open and v == lo):
    raise BadRequest(f"'{key}' must be {'>' if lo_open else '>='} {lo} and <= {hi}, got {v!r}", key)
  return v


def _common(body: Any, served: str, chat: bool) -> Request:
  if not isinstance(body, dict):
    raise BadRequest("the request body must be a JSON object")
  model = body.get("model")
  if not isinstance(model, str) or not model:
    raise BadRequest("'model' is required (a string)", "model")
  if model != served:
    raise BadRequest(f"model '{model}' does not exist; this server serves '{served}'", "model", status=404,
                     code="model_not_found")
  for key, allowed in UNSUPPORTED.items():
    if key in body and body[key] not in allowed:
      raise BadRequest(f"'{key}' is not supported by itjax serve", key)
  default_tokens = DEFAULT_CHAT_TOKENS if chat else DEFAULT_COMPLETION_TOKENS
  tokens_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
  stop = body.get("stop")
  if stop is None:
    stop = []
  elif isinstance(stop, str):
    stop = [stop]
  if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
    raise BadRequest(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
  stream = body.get("stream", False)
  if not isinstance(stream, bool):
    raise BadRequest("'stream' must be true or false", "stream")
  seed = body.get("seed")
  if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
    raise BadRequest(f"'seed' must be an integer, got {seed!r}", "seed")
  n = _number(body, "n", 1, 1, MAX_N, integer=True)
  best_of = body.get("best_of")
  if best_of is not None and best_of != n:
    raise BadRequest("'best_of' is not supported by itjax serve (leave it out or equal to n)", "best_of")
  options = body.get("stream_options") or {}
  return Request(
      chat=chat, model=model, prompts=[], n=n,
      max_tokens=_number(body, tokens_key, default_tokens, 1, 1 << 20, integer=True),
      temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0,
                                                                               lo_open=True),
      top_k=max(0, _number(body, "top_k", 0, -1, 1 << 20, integer=True)),  # -1 is vLLM's "off"
      seed=seed % (2**31) if seed is not None else None, stop=stop, stream=stream,
      include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


def parse_completion(body: Any, served: str, encode, vocab_size: int | None = None) -> Request:
  """A /v1/completions request; `encode(str) -> list[int]`; token-id prompts must lie in [0, vocab_size)."""
  req = _common(body, served, chat=False)
  prompt = body.get("prompt")
  if isinstance(prompt, str):
    req.prompts = [encode(prompt)]
  elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
    req.prompts = [encode(p) for p in prompt]
  elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
    req.prompts = [list(prompt)]
  elif (isinstance(prompt, list) and prompt and all(isinstance(p, list) and p for p in prompt)
        and all(isinstance(t, int) and not isinstance(t, bool) for p in prompt for t in p)):
    req.prompts = [list(p) for p in prompt]
  else:
    raise BadRequest("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
                     "prompt")
  if vocab_size is not None and not isinstance(prompt, str) and not all(isinstance(p, str) for p in prompt):
    bad = next((t for p in req.prompts for t in p if not 0 <= t < vocab_size), None)
    if bad is not None:
      raise BadRequest(f"'prompt' token id {bad} is outside the model's vocabulary (0..{vocab_size - 1})", "prompt")
  return req


def _content(m: Mapping, i: int) -> str:
  content = m.get("content")
  if content is None:
    return ""
  if isinstance(content, str):
    return content
  if isinstance(content, list):
    parts = []
    for k, part in enumerate(content):
      if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        raise BadRequest("only text content parts are supported", f"messages[{i}].content[{k}]")
      parts.append(part["text"])
    return "".join(parts)
  raise BadRequest("'content' must be a string or a list of text parts", f"messages[{i}].content")


def parse_chat(body: Any, served: str, encode, eos_id: int = 1) -> Request:
  """A /v1/chat/completions request; `encode(str) -> list[int]`."""
  req = _common(body, served, chat=True)
  raw = body.get("messages")
  if not isinstance(raw, list) or not raw:
    raise BadRequest("'messages' must be a non-empty list", "messages")
  turns = []
  for i, m in enumerate(raw):
    if not isinstance(m, dict):
      raise BadRequest("a message must be an object with 'role' and 'content'", f"messages[{i}]")
    role = m.get("role")
    if role not in CHAT_ROLES:
      raise BadRequest(f"role {role!r} is not supported (use system, user or assistant)", f"messages[{i}].role")
    turns.append((CHAT_ROLES[role], _content(m, i)))
  req.prompts = [chat_tokens(turns, encode, eos_id)]
  return req


# --- responses --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Choice:
  text: str
  finish_reason: str
  tokens: int


def apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
  """Text cut before the first stop string, and whether one was found."""
  cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
  return (text[:cut], True) if cut >= 0 else (text, False)


def _usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
  done = sum(c.tokens for c in choices)
  return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}


def response(req: Request, choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
  """The non-streaming body: text_completion or chat.completion."""
  created = int(time.time())
  if req.chat:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
            "model": req.model, "usage": _usage(prompt_tokens, choices),
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                         "finish_reason": c.finish_reason} for i, c in enumerate(choices)]}
  return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created, "model": req.model,
          "usage": _usage(prompt_tokens, choices),
          "choices": [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                      for i, c in enumerate(choices)]}


def stream_events(req: Request, choices: list[Choice], prompt_tokens: int) -> Iterator[dict[str, Any]]:
  """Server-sent event bodies for a finished generation: per choice its text, then its finish_reason."""
  rid, created = f"{'chatcmpl' if req.chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
  obj = "chat.completion.chunk" if req.chat else "text_completion"

  def chunk(i: int, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
    if req.chat:
      delta = ({"role": "assistant", "content": ""} if role else {}) | ({"content": text} if text else {})
      choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
      choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice]}

  for i, c in enumerate(choices):
    if req.chat:
      yield chunk(i, None, None, role=True)
    if c.text:
      yield chunk(i, c.text, None)
    yield chunk(i, None, c.finish_reason)
  if req.include_usage:
    yield {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [],
           "usage": _usage(prompt_tokens, choices)}
