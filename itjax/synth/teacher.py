"""A client for any OpenAI-compatible endpoint (`/v1/completions` or `/v1/chat/completions`): vLLM, llama.cpp
server, TGI, a hosted API or `itjax serve`.

Requests run under a concurrency limit and are retried with exponential backoff (and jitter) on connection errors,
timeouts, HTTP 429/5xx, malformed JSON, and answers the caller's `parse` rejects (`Malformed`). Each retry is
logged at WARNING with its attempt number and reason, and counted per reason (`retry_reasons`: "http_503",
"malformed", "timeout", "connection"); `summary()` holds the counts for the report. After the last attempt a
`TeacherError` says why; the pipelines count it and carry on. A refused API key (HTTP 401/403) is a
`UserError` at once. The key comes from an environment variable named by the user; it is sent as a bearer token
and never logged or put in an error message.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from itjax.data.chat_format import chat_text
from itjax.errors import UserError

logger = logging.getLogger("itjax")
ENDPOINTS = ("completions", "chat")
RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)


class Malformed(Exception):
  """A response that is not what was asked for (raised by a `parse` function, or for a bad body); retried."""


class TeacherError(Exception):
  """A request that failed after every retry (or that the server refused as a bad request)."""


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """Where the teacher is and how to talk to it."""

  base_url: str  # e.g. http://127.0.0.1:8000/v1
  model: str
  endpoint: str = "chat"  # "chat": /chat/completions; "completions": /completions
  api_key_env: str | None = "OPENAI_API_KEY"  # the variable holding the key; unset or empty: no key sent
  concurrency: int = 4
  max_retries: int = 4
  backoff: float = 1.0  # seconds before the first retry; doubles each time
  max_backoff: float = 30.0
  timeout: float = 120.0

  def __post_init__(self):
    if self.endpoint not in ENDPOINTS:
      raise UserError(f"--endpoint must be one of {', '.join(ENDPOINTS)}, got {self.endpoint!r}")
    if not self.base_url.startswith(("http://", "https://")):
      raise UserError(f"--teacher_url must start with http:// or https://, got {self.base_url!r}")
    if self.concurrency < 1 or self.max_retries < 0:
      raise UserError("--concurrency must be >= 1 and --max_retries >= 0")


@dataclasses.dataclass(frozen=True)
class Completion:
  """One choice of a response: its text and why generation stopped ("stop", "length", ...)."""

  text: str
  finish_reason: str | None = None


def render_chat(messages: Sequence[Mapping[str, str]]) -> str:
  """Messages as itjax's chat text ("User: ...\\nAssistant:\\n", as `itjax serve`), for a completions endpoint."""
  return chat_text([(m["role"], m["content"]) for m in messages])


class Teacher:
  """Sends prompts to the teacher; thread-safe, at most `concurrency` requests in flight."""

  def __init__(self, cfg: TeacherConfig, sleep: Callable[[float], None] = time.sleep):
    self.cfg = cfg
    self._sem = threading.BoundedSemaphore(cfg.concurrency)
    self._lock = threading.Lock()
    self._sleep = sleep
    self.stats = {"requests": 0, "retries": 0, "failures": 0}
    self.retry_reasons: Counter = Counter()  # why attempts were retried: "http_503", "malformed", "timeout", ...
    self.failure_reasons: Counter = Counter()  # the last reason of requests that failed for good
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
      self._headers["Authorization"] = f"Bearer {key}"
    self._key = key

  def __repr__(self) -> str:  # never show the key
    return f"Teacher({self.cfg.base_url!r}, model={self.cfg.model!r}, endpoint={self.cfg.endpoint!r})"

  def summary(self) -> dict[str, Any]:
    """This run's request counts, with retries and failures by reason (for report.json and progress.json)."""
    with self._lock:
      return {**self.stats, "retry_reasons": dict(sorted(self.retry_reasons.items())),
              "failure_reasons": dict(sorted(self.failure_reasons.items()))}

  def describe(self) -> dict[str, Any]:
    """Provenance: the teacher's model and protocol (not the URL's credentials, never the key)."""
    return {"model": self.cfg.model, "endpoint": self.cfg.endpoint}

  def generate(self, prompt: str | Sequence[Mapping[str, str]], *, parse: Callable[[list[Completion]], Any] | None
               = None, max_tokens: int = 512, temperature: float = 0.7, top_p: float = 1.0,
               stop: Sequence[str] | None = None, n: int = 1, seed: int | None = None) -> Any:
    """The teacher's choices for a prompt (text, or chat messages), passed through `parse` when given.

    Raises TeacherError when every attempt failed; `parse` raising `Malformed` counts as a failed attempt.
    `seed` (for servers that honour it) goes up by one on each retry.
    """
    body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": max_tokens, "temperature": temperature,
                            "top_p": top_p, "n": n}
    if stop:
      body["stop"] = list(stop)
    if self.cfg.endpoint == "chat":
      path = "/chat/completions"
      body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    else:
      path = "/completions"
      body["prompt"] = prompt if isinstance(prompt, str) else render_chat(prompt)
    attempts = self.cfg.max_retries + 1
    for attempt in range(attempts):
      if seed is not None:
        body["seed"] = seed + attempt  # a retry must not get the same malformed answer from a seeded server
      try:
        choices = self._choices(self._post(path, body))
        return parse(choices) if parse else choices
      except Malformed as e:
        last, reason, retry_after = f"malformed response: {e}", "malformed", None
      except _Retryable as e:
        last, reason, retry_after = str(e), e.reason, e.retry_after
      except _Fatal as e:
        self._failed(e.reason)
        raise TeacherError(str(e)) from None
      if attempt + 1 == attempts:
        break
      delay = self._delay(attempt + 1, retry_after)
      with self._lock:
        self.stats["retries"] += 1
        self.retry_reasons[reason] += 1
      logger.warning("teacher: attempt %d/%d failed (%s: %s); retrying in %.1f s", attempt + 1, attempts, reason,
                     last, delay)
      self._sleep(delay)
    self._failed(reason)
    raise TeacherError(f"{attempts} attempts failed; last: {last}")

  # --- internals ----------------------------------------------------------------------------------------------------
  def _count(self, key: str) -> None:
    with self._lock:
      self.stats[key] += 1

  def _failed(self, reason: str) -> None:
    with self._lock:
      self.stats["failures"] += 1
      self.failure_reasons[reason] += 1

  def _delay(self, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter; at least the server's Retry-After, at most max_backoff."""
    base = min(self.cfg.max_backoff, self.cfg.backoff * 2 ** (attempt - 1))
    if retry_after is not None:
      return min(self.cfg.max_backoff, max(base, retry_after))
    return base * (0.5 + random.random() / 2)

  def _scrub(self, text: str) -> str:
    return text.replace(self._key, "***") if self._key else text

  def _post(self, path: str, body: Mapping[str, Any]) -> Any:
    url = self.cfg.base_url.rstrip("/") + path
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=self._headers, method="POST")
    self._count("requests")
    with self._sem:
      try:
        with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
          raw = resp.read()
      except urllib.error.HTTPError as e:
        detail = self._scrub(_error_detail(e))
        if e.code in (401, 403):
          who = f"${self.cfg.api_key_env}" if self.cfg.api_key_env else "no key (--api_key_env is empty)"
          raise UserError(f"teacher {url} refused the API key (HTTP {e.code}: {detail}); "
                          f"the key comes from {who}") from None
        if e.code in RETRY_STATUS:
          after = e.headers.get("Retry-After") if e.headers else None
          after = float(after) if after and after.replace(".", "", 1).isdigit() else None
          raise _Retryable(f"HTTP {e.code} from {url}: {detail}", f"http_{e.code}", after) from None
        raise _Fatal(f"HTTP {e.code} from {url}: {detail}", f"http_{e.code}") from None
      except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):
          raise _Retryable(f"no answer from {url} within {self.cfg.timeout:g} s", "timeout") from None
        raise _Retryable(f"cannot reach {url}: {self._scrub(str(reason))}", "connection") from None
    try:
      return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise Malformed(f"not JSON: {self._scrub(raw[:120].decode('utf-8', 'replace'))!r}") from None

  def _choices(self, payload: Any) -> list[Completion]:
    """The choices of an OpenAI response body, or Malformed."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list) or not payload["choices"]:
      raise Malformed(f"no 'choices' list in {self._scrub(json.dumps(payload)[:120])}")
    out = []
    for c in payload["choices"]:
      if not isinstance(c, dict):
        raise Malformed("a choice is not an object")
      if self.cfg.endpoint == "chat":
        msg = c.get("message")
        text = msg.get("content") if isinstance(msg, dict) else None
      else:
        text = c.get("text")
      if not isinstance(text, str):
        raise Malformed("a choice has no text" + (" (message.content)" if self.cfg.endpoint == "chat" else ""))
      out.append(Completion(text, c.get("finish_reason")))
    return out


class _Retryable(Exception):
  """A failed attempt worth retrying; `reason` is its short name in the counts ("http_503", "timeout", ...)."""

  def __init__(self, message: str, reason: str, retry_after: float | None = None):
    super().__init__(message)
    self.reason, self.retry_after = reason, retry_after


class _Fatal(Exception):
  """A request the server refused as bad (HTTP 4xx other than the retried ones): not retried."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


def _error_detail(e: urllib.error.HTTPError) -> str:
  """The server's error message (OpenAI's {"error": {"message": ...}}), or the body's start."""
  try:
    raw = e.read()[:2000].decode("utf-8", "replace")
  except OSError:
    return e.reason or ""
  try:
    err = json.loads(raw).get("error")
    if isinstance(err, dict) and err.get("message"):
      return str(err["message"])[:300]
    if isinstance(err, str):
      return err[:300]
  except (json.JSONDecodeError, AttributeError):
    pass
  return raw[:300].strip() or str(e.reason)
