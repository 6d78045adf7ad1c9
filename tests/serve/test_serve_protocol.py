"""Request validation and response shapes of the OpenAI protocol, without a model."""

import pytest

from itjax.data import chat_format
from itjax.serve import protocol
from itjax.serve.protocol import BadRequest, Choice


def encode(s):
  return list(s.encode())


def _completion(**body):
  return protocol.parse_completion({"model": "m", "prompt": "hi", **body}, "m", encode)


def test_completion_defaults_and_prompt_forms():
  req = _completion()
  assert (req.prompts, req.n, req.max_tokens, req.temperature, req.top_p, req.top_k, req.stop, req.stream) == (
      [[104, 105]], 1, 16, 1.0, 1.0, 0, [], False)
  assert _completion(prompt=["a", "b"]).prompts == [[97], [98]]
  assert _completion(prompt=[5, 6, 7]).prompts == [[5, 6, 7]]
  assert _completion(prompt=[[5], [6, 7]]).prompts == [[5], [6, 7]]
  req = _completion(max_tokens=7, temperature=0, top_p=0.5, top_k=-1, n=3, stop="\n", seed=2**40 + 3, stream=True,
                    stream_options={"include_usage": True})
  assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.n, req.stop, req.seed, req.include_usage) == (
      7, 0, 0.5, 0, 3, ["\n"], 3, True)
  assert _completion(max_tokens=None, max_completion_tokens=9).max_tokens == 9


@pytest.mark.parametrize("prompt, bad", [([5, 300], 300), ([[1], [-1, 2]], -1), ([256], 256)])
def test_token_ids_outside_the_vocabulary_are_a_400(prompt, bad):
  with pytest.raises(BadRequest, match=f"token id {bad} is outside the model's vocabulary \\(0..255\\)") as e:
    protocol.parse_completion({"model": "m", "prompt": prompt}, "m", encode, vocab_size=256)
  assert e.value.param == "prompt" and e.value.status == 400
  assert protocol.parse_completion({"model": "m", "prompt": [0, 255]}, "m", encode, vocab_size=256).prompts == [
      [0, 255]]


@pytest.mark.parametrize("body, param", [
    ({"prompt": None}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 17}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"seed": 1.5}, "seed"),
    ({"logprobs": 3}, "logprobs"),
    ({"echo": True}, "echo"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"best_of": 4}, "best_of"),
    ({"model": ""}, "model"),
])
def test_bad_completion_requests_name_the_parameter(body, param):
  with pytest.raises(BadRequest) as e:
    _completion(**body)
  assert e.value.param == param and e.value.status == 400
  assert e.value.body()["error"]["param"] == param and e.value.body()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404():
  with pytest.raises(BadRequest) as e:
    protocol.parse_completion({"model": "gpt-9", "prompt": "x"}, "tiny", encode)
  assert e.value.status == 404 and e.value.code == "model_not_found" and "serves 'tiny'" in e.value.message
  with pytest.raises(BadRequest, match="JSON object"):
    protocol.parse_completion(["not", "an", "object"], "tiny", encode)


def test_chat_template_is_itjax_chat_format():
  req = protocol.parse_chat({"model": "m", "messages": [
      {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": [{"type": "text", "text": "Bye"}]}]},
      "m", encode, eos_id=1)
  text = "System: Be brief.\nUser: Hi\nAssistant:\nHello!"
  assert req.prompts[0] == encode(text) + [1] + encode("User: Bye\nAssistant:\n")  # EOS ends each earlier reply
  assert chat_format.chat_text([("system", ""), ("user", "Hi")]) == "User: Hi\nAssistant:\n"
  assert req.max_tokens == protocol.DEFAULT_CHAT_TOKENS
  for messages, param in [([], "messages"), ([{"role": "tool", "content": "x"}], "messages[0].role"),
                          ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0]"),
                          (["hi"], "messages[0]")]:
    with pytest.raises(BadRequest) as e:
      protocol.parse_chat({"model": "m", "messages": messages}, "m", encode)
    assert e.value.param == param


def test_stop_strings_and_response_shapes():
  assert protocol.apply_stop("abc\ndef", ["\n", "c"]) == ("ab", True)
  assert protocol.apply_stop("abc", ["x"]) == ("abc", False)
  req = _completion(n=2)
  body = protocol.response(req, [Choice("a", "stop", 1), Choice("bc", "length", 2)], 2)
  assert body["object"] == "text_completion" and [c["text"] for c in body["choices"]] == ["a", "bc"]
  assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
  chat = protocol.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}, "m",
                             encode)
  events = list(protocol.stream_events(chat, [Choice("hey", "stop", 3)], 5))
  assert [e["choices"][0]["delta"] for e in events] == [{"role": "assistant", "content": ""}, {"content": "hey"}, {}]
  assert events[-1]["choices"][0]["finish_reason"] == "stop" and events[0]["object"] == "chat.completion.chunk"
