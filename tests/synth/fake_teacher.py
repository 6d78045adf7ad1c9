"""A deterministic stand-in for an OpenAI-compatible teacher: a loopback HTTP server whose answers a test scripts.

`respond(body, prompt) -> answer` runs for every request; an answer is a text, (text, finish_reason), or a `Raw`
(status, body bytes, headers) to send as is: server errors, malformed JSON, missing choices.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Raw:
  """An HTTP answer sent verbatim."""

  def __init__(self, status=200, body=b"", headers=None):
    self.status, self.body, self.headers = status, body if isinstance(body, bytes) else body.encode(), headers or {}


def prompt_of(body):
  """The prompt text of a request: the completion prompt, or the chat messages' contents joined."""
  if "prompt" in body:
    return body["prompt"]
  return "\n".join(m["content"] for m in body["messages"])


class FakeTeacher:
  """Serves /v1/completions and /v1/chat/completions with `respond`'s answers; records every request."""

  def __init__(self, respond, delay=0.0):
    self.respond, self.delay = respond, delay
    self.requests, self.headers = [], []
    self.in_flight = self.max_in_flight = 0
    self._lock = threading.Lock()
    teacher = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with teacher._lock:
          teacher.requests.append(body)
          teacher.headers.append(dict(self.headers))
          teacher.in_flight += 1
          teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
        try:
          if teacher.delay:
            time.sleep(teacher.delay)
          answer = teacher.respond(body, prompt_of(body))
        finally:
          with teacher._lock:
            teacher.in_flight -= 1
        if not isinstance(answer, Raw):
          text, finish = (answer, "stop") if isinstance(answer, str) else answer
          chat = self.path.endswith("/chat/completions")
          choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish} if chat
                    else {"index": 0, "text": text, "finish_reason": finish})
          answer = Raw(200, json.dumps({"id": "x", "object": "x", "choices": [choice] * body.get("n", 1)}))
        self.send_response(answer.status)
        for k, v in answer.headers.items():
          self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
