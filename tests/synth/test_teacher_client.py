"""The teacher client against a scripted loopback server: retries with backoff, then a reported failure; the API
key sent but never shown; the concurrency limit."""

import json
import logging
import socket
import threading

import pytest
from fake_teacher import FakeTeacher, Raw

from itjax.errors import UserError
from itjax.synth.teacher import Malformed, Teacher, TeacherConfig, TeacherError

KEY = "sk-test-SECRET-0123456789"


def _teacher(url, sleeps=None, **kw):
  cfg = TeacherConfig(url, "fake", **{"endpoint": "completions", "max_retries": 3, "backoff": 0.5, **kw})
  return Teacher(cfg, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def _script(*answers):
  """A respond function giving `answers` in order, then the last one forever."""
  answers, lock = list(answers), threading.Lock()

  def respond(body, prompt):
    with lock:
      return answers.pop(0) if len(answers) > 1 else answers[0]
  return respond


@pytest.fixture
def fake():
  servers = []

  def make(respond, **kw):
    servers.append(FakeTeacher(respond, **kw))
    return servers[-1]
  yield make
  for s in servers:
    s.close()


def test_server_errors_and_malformed_bodies_are_retried_with_exponential_backoff(fake):
  srv = fake(_script(Raw(500, "boom"), Raw(200, "{not json"), Raw(200, json.dumps({"choices": []})),
                     ("ok", "stop")))
  sleeps = []
  t = _teacher(srv.url, sleeps)
  out = t.generate("hi", max_tokens=5)
  assert [(c.text, c.finish_reason) for c in out] == [("ok", "stop")]
  assert len(srv.requests) == 4 and t.stats == {"requests": 4, "retries": 3, "failures": 0}
  # 0.5 s doubling, with jitter in [50%, 100%]
  for s, base in zip(sleeps, [0.5, 1.0, 2.0], strict=True):
    assert base / 2 <= s <= base
  assert srv.requests[0] == {"model": "fake", "max_tokens": 5, "temperature": 0.7, "top_p": 1.0, "n": 1,
                             "prompt": "hi"}


def test_after_the_last_retry_the_failure_is_reported_not_raised_raw(fake):
  srv = fake(_script(Raw(503, json.dumps({"error": {"message": "overloaded"}}))))
  t = _teacher(srv.url, max_retries=2)
  with pytest.raises(TeacherError, match="3 attempts failed; last: HTTP 503 .*overloaded"):
    t.generate("hi")
  assert len(srv.requests) == 3 and t.stats["failures"] == 1


def test_a_parse_failure_is_retried_then_reported(fake):
  srv = fake(_script(("garbage", "stop"), ("42", "stop")))
  t = _teacher(srv.url)

  def parse(choices):
    if not choices[0].text.isdigit():
      raise Malformed("not a number")
    return int(choices[0].text)
  assert t.generate("n?", parse=parse) == 42
  with pytest.raises(TeacherError, match="malformed response: not a number"):
    _teacher(fake(_script(("garbage", "stop"))).url, max_retries=1).generate("n?", parse=parse)


def test_bad_request_is_not_retried(fake):
  srv = fake(_script(Raw(400, json.dumps({"error": {"message": "max_tokens too large"}}))))
  with pytest.raises(TeacherError, match="HTTP 400 .*max_tokens too large"):
    _teacher(srv.url).generate("hi")
  assert len(srv.requests) == 1


def test_retry_after_is_honoured(fake):
  srv = fake(_script(Raw(429, "slow down", {"Retry-After": "3"}), "ok"))
  sleeps = []
  _teacher(srv.url, sleeps, backoff=0.1).generate("hi")
  assert sleeps == [3.0]


def test_unreachable_teacher_is_retried_then_reported():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # nothing listens here once closed
  t = _teacher(f"http://127.0.0.1:{port}/v1", max_retries=1)
  with pytest.raises(TeacherError, match="cannot reach"):
    t.generate("hi")
  assert t.stats["retries"] == 1


def test_api_key_is_sent_from_the_env_var_and_never_shown(fake, monkeypatch, caplog):
  monkeypatch.setenv("MY_TEACHER_KEY", KEY)
  srv = fake(_script(Raw(500, f"error for key {KEY}"), "ok"))
  caplog.set_level(logging.DEBUG)
  t = _teacher(srv.url, api_key_env="MY_TEACHER_KEY")
  assert t.generate("hi")[0].text == "ok"
  assert srv.headers[0]["Authorization"] == f"Bearer {KEY}"
  assert KEY not in repr(t) and KEY not in json.dumps(t.describe())
  srv2 = fake(_script(Raw(502, f"upstream rejected {KEY}")))
  with pytest.raises(TeacherError) as err:
    _teacher(srv2.url, api_key_env="MY_TEACHER_KEY", max_retries=0).generate("hi")
  assert KEY not in str(err.value) and "***" in str(err.value)
  srv3 = fake(_script(Raw(401, json.dumps({"error": {"message": f"bad key {KEY}"}}))))
  with pytest.raises(UserError, match=r"refused the API key \(HTTP 401.*\$MY_TEACHER_KEY") as err:
    _teacher(srv3.url, api_key_env="MY_TEACHER_KEY").generate("hi")
  assert KEY not in str(err.value)
  assert len(srv3.requests) == 1  # a refused key is not retried
  assert KEY not in caplog.text


def test_no_key_no_header(fake, monkeypatch):
  monkeypatch.delenv("OPENAI_API_KEY", raising=False)
  srv = fake(_script("ok"))
  _teacher(srv.url).generate("hi")
  assert "Authorization" not in srv.headers[0]


def test_chat_endpoint_and_concurrency_limit(fake):
  srv = fake(_script("fine"), delay=0.05)
  t = Teacher(TeacherConfig(srv.url, "fake", endpoint="chat", concurrency=2))
  threads = [threading.Thread(target=lambda: t.generate([{"role": "user", "content": "hi"}])) for _ in range(8)]
  for th in threads:
    th.start()
  for th in threads:
    th.join()
  assert len(srv.requests) == 8 and srv.max_in_flight == 2
  assert srv.requests[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_config_mistakes_are_user_errors():
  with pytest.raises(UserError, match="--endpoint"):
    TeacherConfig("http://x/v1", "m", endpoint="responses")
  with pytest.raises(UserError, match="--teacher_url"):
    TeacherConfig("localhost:8000", "m")


def test_each_retry_is_logged_with_its_attempt_and_reason_and_counted(fake, caplog):
  srv = fake(_script(Raw(503, "busy"), Raw(200, "{not json"), Raw(200, json.dumps({"choices": []})), "ok"))
  caplog.set_level(logging.WARNING, logger="itjax")
  t = _teacher(srv.url)
  assert t.generate("hi")[0].text == "ok"
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 3
  assert warnings[0].startswith("teacher: attempt 1/4 failed (http_503: HTTP 503 from ") and "busy" in warnings[0]
  assert warnings[1].startswith("teacher: attempt 2/4 failed (malformed: malformed response: not JSON")
  assert warnings[2].startswith("teacher: attempt 3/4 failed (malformed: malformed response: no 'choices'")
  assert t.summary() == {"requests": 4, "retries": 3, "failures": 0, "retry_reasons": {"http_503": 1, "malformed": 2},
                         "failure_reasons": {}}


def test_timeouts_are_their_own_retry_reason(fake, caplog):
  srv = fake(_script("late"), delay=0.5)
  caplog.set_level(logging.WARNING, logger="itjax")
  t = _teacher(srv.url, max_retries=1, timeout=0.05)
  with pytest.raises(TeacherError, match="no answer from .* within 0.05 s"):
    t.generate("hi")
  assert "attempt 1/2 failed (timeout: " in caplog.text
  assert t.summary()["retry_reasons"] == {"timeout": 1} and t.summary()["failure_reasons"] == {"timeout": 1}
