"""`itjax serve`: an itjax MODEL_DIR (trained, or imported from HF with `itjax convert`) on the OpenAI protocol.

    itjax serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--model_name NAME] [--max_batch 8]

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream optional), GET /health. A
standard-library threading HTTP server: each request waits on the engine's batching queue, so concurrent
requests decode together. With --api_key_env VAR, requests must carry `Authorization: Bearer $VAR`.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from itjax.errors import UserError
from itjax.serve import protocol
from itjax.serve.engine import Engine, Sampling, parse_mesh_shape
from itjax.serve.protocol import BadRequest, Choice

logger = logging.getLogger("itjax")
MAX_BODY = 64 << 20


class Handler(BaseHTTPRequestHandler):
  """Routes one HTTP request; `self.server.app` is the `Server`."""

  protocol_version = "HTTP/1.1"
  server_version = "itjax-serve"

  def log_message(self, fmt: str, *args: Any) -> None:
    logger.debug("%s %s", self.address_string(), fmt % args)

  def _send(self, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def _authorized(self) -> bool:
    key = self.server.app.api_key
    if not key:
      return True
    got = self.headers.get("Authorization", "")
    if got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), key.encode()):
      return True
    self._send(401, protocol.error_body("missing or wrong API key (Authorization: Bearer ...)", "authentication_error",
                                        code="invalid_api_key"))
    return False

  def do_GET(self) -> None:
    app = self.server.app
    path = self.path.split("?")[0].rstrip("/")
    if path == "/health":
      self._send(200, {"status": "ok"})
    elif not self._authorized():
      return
    elif path == "/v1/models":
      self._send(200, {"object": "list", "data": [app.model_card()]})
    elif path == f"/v1/models/{app.model_name}":
      self._send(200, app.model_card())
    else:
      self._send(404, protocol.error_body(f"no route GET {path}", "invalid_request_error", code="not_found"))

  def do_POST(self) -> None:
    path = self.path.split("?")[0].rstrip("/")
    if path not in ("/v1/completions", "/v1/chat/completions"):
      self._send(404, protocol.error_body(f"no route POST {path}", "invalid_request_error", code="not_found"))
      return
    try:
      length = int(self.headers.get("Content-Length", ""))
    except ValueError:
      self.close_connection = True
      self._send(411, protocol.error_body("a Content-Length header is required", "invalid_request_error"))
      return
    if length > MAX_BODY:
      self.close_connection = True
      self._send(413, protocol.error_body(f"request body over {MAX_BODY} bytes", "invalid_request_error"))
      return
    raw = self.rfile.read(length)
    if not self._authorized():
      return
    try:
      try:
        body = json.loads(raw)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
      self.server.app.handle(self, path.endswith("/chat/completions"), body)
    except BadRequest as e:
      self._send(e.status, e.body())
    except Exception as e:  # a bug: answered as HTTP 500, logged with its traceback
      logger.exception("request failed")
      self._send(500, protocol.error_body(f"internal error: {type(e).__name__}: {e}", "server_error"))

  def send_events(self, events) -> None:
    """Server-sent events, then [DONE]; the connection closes after."""
    self.close_connection = True
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream")
    self.send_header("Cache-Control", "no-cache")
    self.send_header("Connection", "close")
    self.end_headers()
    for ev in events:
      self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
      self.wfile.flush()
    self.wfile.write(b"data: [DONE]\n\n")
    self.wfile.flush()


class Server:
  """The HTTP server around an engine; `start()` serves in a thread (tests), `serve_forever()` in this one."""

  def __init__(self, engine, model_name: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None):
    self.engine, self.model_name, self.api_key = engine, model_name, api_key
    self.created = int(time.time())
    try:
      self.httpd = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
      raise UserError(f"itjax serve: cannot listen on {host}:{port} ({e.strerror})") from None
    self.httpd.daemon_threads = True
    self.httpd.app = self
    self._thread: threading.Thread | None = None

  @property
  def url(self) -> str:
    host, port = self.httpd.server_address[:2]
    return f"http://{host}:{port}/v1"

  def model_card(self) -> dict[str, Any]:
    return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "itjax"}

  def handle(self, h: Handler, chat: bool, body: Any) -> None:
    """Validates, generates (n choices per prompt), answers as JSON or server-sent events."""
    vocab = self.engine.vocab
    encode = lambda s: list(vocab.encode(s))
    if chat:
      req = protocol.parse_chat(body, self.model_name, encode, vocab.eos_id)
    else:
      req = protocol.parse_completion(body, self.model_name, encode, self.engine.vocab_size)
    for p in req.prompts:
      why = self.engine.check_length(len(p), req.max_tokens)
      if why:
        raise BadRequest(why, "max_tokens" if len(p) < self.engine.context else "prompt",
                         code="context_length_exceeded")
    sampling = Sampling(req.temperature, req.top_p, req.top_k, req.seed)
    rows = [p for p in req.prompts for _ in range(req.n)]
    choices = []
    for gen in self.engine.generate(rows, req.max_tokens, sampling):
      text, stopped = protocol.apply_stop(vocab.decode(gen.tokens), req.stop)
      choices.append(Choice(text, "stop" if gen.eos or stopped else "length", len(gen.tokens)))
    prompt_tokens = sum(len(p) for p in req.prompts)
    if req.stream:
      h.send_events(protocol.stream_events(req, choices, prompt_tokens))
    else:
      h._send(200, protocol.response(req, choices, prompt_tokens))

  def start(self) -> Server:
    self._thread = threading.Thread(target=self.httpd.serve_forever, name="itjax-serve-http", daemon=True)
    self._thread.start()
    return self

  def serve_forever(self) -> None:
    self.httpd.serve_forever()

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
    self.engine.close()


def run(args: argparse.Namespace) -> int:
  """`itjax serve`: loads the model, serves until interrupted."""
  if args.max_batch < 1:
    raise UserError(f"--max_batch must be >= 1, got {args.max_batch}")
  api_key = None
  if args.api_key_env:
    api_key = os.environ.get(args.api_key_env)
    if not api_key:
      raise UserError(f"--api_key_env {args.api_key_env}: the variable is not set or empty")
  engine = Engine(args.checkpoint, mesh_shape=parse_mesh_shape(args.mesh_shape), max_batch=args.max_batch,
                  batch_wait_s=args.batch_wait_ms / 1000)
  name = args.model_name or os.path.basename(os.path.normpath(args.checkpoint))
  server = Server(engine, name, args.host, args.port, api_key)
  print(f"itjax serve: {name} at {server.url} (Ctrl-C to stop)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.close()
  return 0
