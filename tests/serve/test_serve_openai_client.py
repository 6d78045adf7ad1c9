"""The official `openai` Python client against `itjax serve`: models, completions, chat, streaming, errors."""

import pytest

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def test_models(client):
  assert [m.id for m in client.models.list()] == ["tiny"]


def test_completion(client):
  r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
  assert r.object == "text_completion" and len(r.choices) == 1
  assert r.choices[0].finish_reason in ("stop", "length")
  assert r.usage.prompt_tokens == len("Once upon a time") and 0 < r.usage.completion_tokens <= 8
  again = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
  assert again.choices[0].text == r.choices[0].text


def test_chat_completion_with_n_and_seed(client):
  kw = {"model": "tiny", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 6, "temperature": 0.8, "n": 3, "seed": 11}
  r = client.chat.completions.create(**kw)
  assert [c.index for c in r.choices] == [0, 1, 2] and all(c.message.role == "assistant" for c in r.choices)
  assert [c.message.content for c in client.chat.completions.create(**kw).choices] == [
      c.message.content for c in r.choices]


def test_streaming(client):
  full = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me"}],
                                        max_tokens=8, temperature=0)
  stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me"}],
                                          max_tokens=8, temperature=0, stream=True)
  chunks = list(stream)
  assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
  assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
  text = "".join(c.choices[0].text for c in client.completions.create(model="tiny", prompt="Tell me", max_tokens=8,
                                                                         temperature=0, stream=True))
  assert text == client.completions.create(model="tiny", prompt="Tell me", max_tokens=8, temperature=0).choices[0].text


def test_errors(client):
  with pytest.raises(openai.BadRequestError, match="top_p"):
    client.completions.create(model="tiny", prompt="x", max_tokens=4, top_p=0)
  with pytest.raises(openai.NotFoundError, match="serves 'tiny'"):
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
