"""`itjax serve` over raw HTTP with a tiny random model: generations equal the model interface's, requests batch
together, sampling is reproducible with a seed, errors are JSON with HTTP 4xx, streaming is server-sent events."""

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import flax.linen as nn
import jax
import pytest
from serve_helpers import start_server

from itjax.cli import main
from itjax.models.decoding import strip_eos
from itjax.models.families import interface_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _post(url, body, headers=None, raw=None):
  """(status, parsed JSON body) of a POST."""
  data = raw if raw is not None else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
  try:
    with urllib.request.urlopen(req, timeout=120) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _complete(server, **body):
  status, out = _post(server.url + "/completions", {"model": "tiny", "max_tokens": 12, "temperature": 0, **body})
  assert status == 200, out
  return out


def test_health_and_models(server):
  with urllib.request.urlopen(server.url.replace("/v1", "/health")) as r:
    assert json.loads(r.read()) == {"status": "ok"}
  with urllib.request.urlopen(server.url + "/models") as r:
    assert [m["id"] for m in json.loads(r.read())["data"]] == ["tiny"]


def test_greedy_completion_equals_the_model_interface(server):
  out = _complete(server, prompt="The cat sat on")
  engine = server.engine
  prompt = list(engine.vocab.encode("The cat sat on"))
  with jax.set_mesh(engine.mesh), nn.logical_axis_rules(engine.rules):
    ref = interface_for(engine.model).generate(engine.params, [prompt], max_new_tokens=12, eos_id=engine.vocab.eos_id)
  ref_tokens = strip_eos(ref[0], engine.vocab.eos_id)
  choice = out["choices"][0]
  assert choice["text"] == engine.vocab.decode(ref_tokens)
  assert out["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(ref_tokens),
                          "total_tokens": len(prompt) + len(ref_tokens)}
  assert choice["finish_reason"] == ("length" if len(ref_tokens) == 12 else "stop")


def test_prompt_lists_n_token_ids_and_max_tokens(server):
  out = _complete(server, prompt=["one", "two"], n=2, max_tokens=5, temperature=0.9, seed=1)
  assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
  assert out["usage"]["completion_tokens"] <= 4 * 5
  ids = list(server.engine.vocab.encode("one"))
  assert _complete(server, prompt=ids)["choices"][0]["text"] == _complete(server, prompt="one")["choices"][0]["text"]


def test_stop_strings_cut_the_text(server):
  text = _complete(server, prompt="Hello", max_tokens=16)["choices"][0]["text"]
  if len(text) < 4:
    pytest.skip("the random model ended too early to test stop strings")
  stop = text[2:4]
  out = _complete(server, prompt="Hello", max_tokens=16, stop=[stop])["choices"][0]
  assert out["text"] == text[: text.find(stop)] and out["finish_reason"] == "stop"


def test_sampling_is_reproducible_with_a_seed(server):
  a = _complete(server, prompt="Seeded", temperature=1.0, seed=7)["choices"][0]["text"]
  b = _complete(server, prompt="Seeded", temperature=1.0, seed=7)["choices"][0]["text"]
  assert a == b


def test_concurrent_requests_are_batched(server):
  before, results = server.engine.batches, []

  def go(i):
    results.append(_complete(server, prompt=f"request {i}", max_tokens=8)["choices"][0]["text"])

  threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(results) == 8 and server.engine.batches - before < 8  # max_batch 4: at least two requests per batch


def test_chat_completion_and_stream(server):
  status, out = _post(server.url + "/chat/completions", {"model": "tiny", "max_tokens": 6, "temperature": 0,
                                                         "messages": [{"role": "user", "content": "Hi"}]})
  assert status == 200 and out["object"] == "chat.completion"
  assert out["choices"][0]["message"]["role"] == "assistant"
  assert out["usage"]["prompt_tokens"] == len("User: Hi\nAssistant:\n")
  req = urllib.request.Request(server.url + "/chat/completions", data=json.dumps(
      {"model": "tiny", "max_tokens": 6, "temperature": 0, "stream": True,
       "messages": [{"role": "user", "content": "Hi"}]}).encode(), headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req) as r:
    assert r.headers["Content-Type"] == "text/event-stream"
    events = [line[6:] for line in r.read().decode().split("\n\n") if line.startswith("data: ")]
  assert events[-1] == "[DONE]"
  chunks = [json.loads(e) for e in events[:-1]]
  assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == out["choices"][0]["message"]["content"]


def test_errors_are_json_with_4xx(server):
  status, out = _post(server.url + "/completions", None, raw=b"{not json")
  assert status == 400 and "not valid JSON" in out["error"]["message"]
  status, out = _post(server.url + "/completions", {"model": "tiny", "prompt": "x", "temperature": -1})
  assert status == 400 and out["error"]["param"] == "temperature"
  status, out = _post(server.url + "/completions", {"model": "gpt-4", "prompt": "x"})
  assert status == 404 and out["error"]["code"] == "model_not_found"
  status, out = _post(server.url + "/completions", {"model": "tiny", "prompt": "x", "max_tokens": 5000})
  assert status == 400 and out["error"]["code"] == "context_length_exceeded"
  status, out = _post(server.url + "/embeddings", {"model": "tiny", "input": "x"})
  assert status == 404 and "no route" in out["error"]["message"]


def test_api_key_is_required_when_configured(model_dir):
  srv = start_server(model_dir, api_key="s3cret", max_batch=4)
  try:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2, "temperature": 0}
    status, out = _post(srv.url + "/completions", body)
    assert status == 401 and out["error"]["code"] == "invalid_api_key"
    status, _ = _post(srv.url + "/completions", body, headers={"Authorization": "Bearer s3cret"})
    assert status == 200
  finally:
    srv.close()


@pytest.mark.slow
def test_serve_command(model_dir, tmp_path, capsys):
  assert main(["serve", "--checkpoint", str(tmp_path / "missing")]) == 2
  assert "model_config.json" in capsys.readouterr().err
  proc = subprocess.Popen([sys.executable, "-m", "itjax.cli", "serve", "--checkpoint", model_dir, "--port", "0",
                           "--model_name", "cli-tiny"], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    line = proc.stdout.readline()
    url = re.search(r"at (http://\S+/v1)", line).group(1)
    with urllib.request.urlopen(url + "/models", timeout=60) as r:
      assert json.loads(r.read())["data"][0]["id"] == "cli-tiny"
  finally:
    proc.send_signal(2)  # Ctrl-C
    assert proc.wait(timeout=60) == 0
