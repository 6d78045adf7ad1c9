"""JSONL sources: each format's fields, Alpaca rendering, strict errors naming file:line:field, the skip policy."""

import json
import logging
import re

import pytest
import seqio

from itjax.data import jsonl, row_index
from itjax.errors import UserError

LENGTHS = {"inputs": 512, "targets": 128}
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                     "Translate to French.\n\n### Input:\ncat\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\nName a color.\n\n### Response:\n")


def _write(path, lines):
  """Writes lines (dicts as JSON, str/bytes verbatim) one per line; returns the path as a string."""
  with open(path, "wb") as f:
    for line in lines:
      if isinstance(line, dict):
        line = json.dumps(line)
      f.write((line.encode() if isinstance(line, str) else line) + b"\n")
  return str(path)


@pytest.fixture
def register():
  """register_jsonl_task with unique names, unregistered afterwards."""
  names = []

  def reg(paths, fmt, **kw):
    name = f"jsonl_test_{len(names)}_{fmt}"
    names.extend(jsonl.register_jsonl_task(name, paths, fmt, **kw))
    return names[-1]

  yield reg
  for n in names:
    seqio.TaskRegistry.remove(n)


def _rows(name, split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


# --- formats ----------------------------------------------------------------------------------------------------------
def test_alpaca_fields_with_and_without_input(tmp_path):
  path = _write(tmp_path / "a.jsonl", [
      {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
      {"instruction": "Name a color.", "input": "", "output": "red"},
      {"instruction": "Name a fruit.", "output": "fig"},  # input is optional
  ])
  a, b, c = jsonl.read_jsonl(path, "alpaca")
  assert (a["instruction"], a["input"], a["answer"]) == ("Translate to French.", "cat", "chat")
  assert a["input_block"] == "\n\n### Input:\ncat" and a["input_clause"] == jsonl.INPUT_CLAUSE
  assert (b["input"], b["input_block"], b["input_clause"], b["answer"]) == ("", "", "", "red")
  assert c["input"] == "" and c["answer"] == "fig"
  assert set(a) == set(jsonl.FIELDS) | {"answer"}


def test_dolly_context_becomes_input(tmp_path):
  path = _write(tmp_path / "d.jsonl", [
      {"instruction": "Who?", "context": "Ann met Bob.", "response": "Ann", "category": "closed_qa"},
      {"instruction": "Say hi.", "context": "", "response": "hi"},
  ])
  a, b = jsonl.read_jsonl(path, "dolly")
  assert (a["instruction"], a["input"], a["answer"]) == ("Who?", "Ann met Bob.", "Ann")
  assert b["input"] == "" and b["input_block"] == ""


def test_chat_renders_history_and_keeps_turns(tmp_path):
  conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
          {"role": "assistant", "content": "4"}]
  path = _write(tmp_path / "c.jsonl", [{"messages": conv}])
  (ex,) = jsonl.read_jsonl(path, "chat")
  assert ex["instruction"] == "System: Be brief.\nUser: Hi\nAssistant: Hello\nUser: 2+2?"
  assert ex["answer"] == "4" and ex["input"] == ""
  (turns,) = jsonl.read_chat(path)
  assert turns == [jsonl.Turn(m["role"], m["content"]) for m in conv]


def test_sharegpt_conversations_are_accepted(tmp_path):
  path = _write(tmp_path / "s.jsonl", [{"id": "x1", "conversations": [
      {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
  (ex,) = jsonl.read_jsonl(path, "chat")
  assert ex["instruction"] == "User: Hi" and ex["answer"] == "Hello"
  assert jsonl.read_chat(path) == [[jsonl.Turn("user", "Hi"), jsonl.Turn("assistant", "Hello")]]


def test_prompt_completion_strips_endoftext(tmp_path):
  path = _write(tmp_path / "p.jsonl", [
      {"prompt": "Is the sky blue?", "completion": " yes<|endoftext|>"},
      {"prompt": "Q", "completion": "no end marker"},
  ])
  a, b = jsonl.read_jsonl(path, "prompt_completion")
  assert (a["instruction"], a["answer"]) == ("Is the sky blue?", " yes")
  assert b["answer"] == "no end marker"


def test_crlf_bom_and_blank_lines_are_fine(tmp_path):
  path = tmp_path / "w.jsonl"
  path.write_bytes(b'\xef\xbb\xbf{"instruction": "a", "output": "b"}\r\n\r\n{"instruction": "c", "output": "d"}\r\n')
  assert [e["answer"] for e in jsonl.read_jsonl(path, "alpaca")] == ["b", "d"]
  assert jsonl.validate(path, "alpaca").blank == 1


# --- registered tasks -------------------------------------------------------------------------------------------------
def test_registered_task_renders_alpaca_format(tmp_path, register):
  path = _write(tmp_path / "a.jsonl", [
      {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
      {"instruction": "Name a color.", "input": "", "output": "red"},
  ])
  name = register({"train": [path]}, "alpaca", templates=[jsonl.ALPACA_TEMPLATE])
  assert name.endswith("_zs_noopt")
  rows = _rows(name)
  assert [r["inputs_pretokenized"].decode() for r in rows] == [ALPACA_WITH_INPUT, ALPACA_NO_INPUT]
  assert [r["targets_pretokenized"] for r in rows] == [b"chat", b"red"]
  assert rows[0]["options"].shape == (0,) and rows[0]["cluster"] == b"instruction"


def test_default_alpaca_templates_all_render_on_eval_split(tmp_path, register):
  path = _write(tmp_path / "a.jsonl", [{"instruction": "Name a color.", "output": "red"}])
  name = register({"validation": path}, "alpaca")
  inputs = [r["inputs_pretokenized"].decode() for r in _rows(name, "validation")]
  assert inputs == [ALPACA_NO_INPUT, "### Instruction:\nName a color.\n\n### Response:\n",
                    "Instruction: Name a color.\nOutput:\n", "Name a color.\n"]


def test_chat_task_ends_prompt_with_assistant_cue(tmp_path, register):
  path = _write(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello"}]}])
  (row,) = _rows(register({"train": path}, "chat"))
  assert row["inputs_pretokenized"] == b"User: Hi\nAssistant:\n" and row["targets_pretokenized"] == b"Hello"


def test_registration_reads_nothing_and_counts_lazily(tmp_path, register):
  missing = str(tmp_path / "later.jsonl")
  name = register({"train": [missing]}, "alpaca")  # the file does not exist yet: fine until first use
  task = seqio.get_mixture_or_task(name)
  with pytest.raises(UserError, match=re.escape(f"{missing}: no such file")):
    task.get_dataset(LENGTHS, split="train", shuffle=False)
  _write(missing, [{"instruction": "a", "output": "b"}, "", {"instruction": "c", "output": "d"}])
  assert task.num_input_examples("train") == 2


# --- errors -----------------------------------------------------------------------------------------------------------
GOOD = {"instruction": "Name a color.", "output": "red"}
USER_BOT = [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]
ERRORS = {  # reason -> (format, bad line, expected message after "path:2: ")
    "invalid_json": ("alpaca", '{"instruction": "a", "output": }', "invalid JSON: Expecting value (column 32)"),
    "missing_field": ("alpaca", {"instruction": "a"}, "field 'output': missing (fields present: instruction)"),
    "wrong_type": ("alpaca", {"instruction": "a", "output": 5}, "field 'output': expected a string, got int"),
    "empty_target": ("alpaca", {"instruction": "a", "output": " "}, "field 'output': empty target"),
    "empty_field": ("dolly", {"instruction": "", "context": "", "response": "b"}, "field 'instruction': empty"),
    "bad_role": ("chat", {"messages": USER_BOT},
                 "field 'messages[1].role': expected one of 'system', 'user', 'assistant', got 'bot'"),
    "bad_turns": ("chat", {"messages": [{"role": "user", "content": "Hi"}]},
                  "field 'messages[0].role': the last turn must be the assistant's"),
    "not_utf8": ("alpaca", b'{"instruction": "a", "output": "caf\xe9"}', "field 'output': invalid UTF-8 byte 0xe9"),
    "too_long": ("alpaca", {"instruction": "a", "output": "x" * 100},
                 "field 'output': example is 101 characters (100 in this field), over max_chars=64"),
}
MORE_ERRORS = [
    ("chat", {"messages": "Hi"}, "field 'messages': expected a list, got string"),
    ("chat", {"conversations": [{"from": "human", "value": "Hi"}, {"from": "assistant", "value": "x"}]},
     "field 'conversations[1].from': expected one of 'system', 'human', 'gpt', got 'assistant'"),
    ("chat", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 3}]},
     "field 'messages[1].content': expected a string, got int"),
    ("dolly", {"instruction": "a", "response": "b"}, "field 'context': missing"),
    ("prompt_completion", {"prompt": "Q", "completion": "<|endoftext|>"}, "field 'completion': empty target"),
    ("alpaca", '{"instruction": "a", "output": "\\ud800"}', "field 'output': invalid Unicode (lone surrogate"),
    ("alpaca", '["a", "b"]', "expected a JSON object, got list"),
]


def _first_line(fmt):
  return {"alpaca": GOOD, "dolly": {"instruction": "a", "context": "", "response": "b"},
          "chat": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
          "prompt_completion": {"prompt": "a", "completion": "b"}}[fmt]


@pytest.mark.parametrize("fmt,bad,message", [*ERRORS.values(), *MORE_ERRORS], ids=[*ERRORS, *range(len(MORE_ERRORS))])
def test_bad_line_raises_user_error_naming_file_line_field(tmp_path, fmt, bad, message):
  path = _write(tmp_path / "bad.jsonl", [_first_line(fmt), bad])
  with pytest.raises(UserError) as e:
    list(jsonl.read_jsonl(path, fmt, max_chars=64))
  assert str(e.value).startswith(f"{path}:2: {message}"), str(e.value)


def test_task_raises_plain_user_error_not_a_tf_error(tmp_path, register):
  path = _write(tmp_path / "bad.jsonl", [GOOD, GOOD, {"instruction": "a", "output": 5}])
  task = seqio.get_mixture_or_task(register({"train": path}, "alpaca"))
  # Raised by get_dataset itself (eager validation), before any tf.data iteration.
  with pytest.raises(UserError, match=re.escape(f"{path}:3: field 'output': expected a string, got int")):
    task.get_dataset(LENGTHS, split="train", shuffle=False)


def test_skip_policy_counts_reasons_and_yields_valid_rows(tmp_path, register, caplog):
  lines = [GOOD] + [bad for fmt, bad, _ in ERRORS.values() if fmt == "alpaca"] + [{**GOOD, "output": "blue"}]
  path = _write(tmp_path / "mixed.jsonl", lines)
  name = register({"train": path}, "alpaca", on_error="skip", max_chars=64, templates=[jsonl.ALPACA_TEMPLATE])
  with caplog.at_level(logging.WARNING, logger="itjax"):
    rows = _rows(name)
  assert [r["targets_pretokenized"] for r in rows] == [b"red", b"blue"]
  expected = {r: 1 for r, (fmt, _, _) in ERRORS.items() if fmt == "alpaca"}
  source = seqio.get_mixture_or_task(name).source
  assert source.skipped == expected and source.num_input_examples("train") == 2
  (warning,) = [r.getMessage() for r in caplog.records if r.name == "itjax"]
  assert f"{path} (alpaca): 2 of {len(lines)} lines valid" in warning
  assert f"{path}:3: field 'output': missing" in warning  # first message of each reason


def test_validate_reports_without_building_a_dataset(tmp_path):
  path = _write(tmp_path / "v.jsonl", [GOOD, "{oops", "", {"instruction": "a", "output": 1}, GOOD, "{oops"])
  report = jsonl.validate(path, "alpaca")
  assert (report.valid, report.blank, report.skipped) == (2, 1, {"invalid_json": 2, "wrong_type": 1})
  assert not report.ok and report.num_skipped == 3
  assert report.first_error["invalid_json"].startswith(f"{path}:2: invalid JSON")
  assert jsonl.validate(_write(tmp_path / "ok.jsonl", [GOOD]), "alpaca").ok


def test_read_chat_skip_policy_counts(tmp_path):
  ok = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
  path = _write(tmp_path / "c.jsonl", [ok, {"messages": USER_BOT}, {"messages": []}])
  report = jsonl.Report(path, "chat")
  assert len(jsonl.read_chat(path, on_error="skip", report=report)) == 1
  assert report.skipped == {"bad_role": 1, "bad_turns": 1}


def test_bad_options_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="unknown JSONL format 'alpacca'.*did you mean 'alpaca'"):
    jsonl.jsonl_source({"train": "x.jsonl"}, "alpacca")
  with pytest.raises(UserError, match="on_error must be one of raise, skip"):
    jsonl.jsonl_source({"train": "x.jsonl"}, "alpaca", on_error="ignore")


def test_file_changed_after_validation_still_names_the_line(tmp_path):
  path = _write(tmp_path / "a.jsonl", [GOOD])
  source = jsonl.jsonl_source({"train": path}, "alpaca")
  ds = source.get_dataset("train", shuffle=False)
  _write(path, [GOOD, {"instruction": "a"}])
  with pytest.raises(Exception, match=re.escape(f"{path}:2: field 'output': missing")):
    list(ds.as_numpy_iterator())


def test_many_rows_across_files_keep_order(tmp_path):
  a = _write(tmp_path / "a.jsonl", [{"instruction": "q", "output": str(i)} for i in range(row_index.CHUNK + 44)])
  b = _write(tmp_path / "b.jsonl", [{"instruction": "q", "output": "last"}])
  source = jsonl.jsonl_source({"train": [a, b]}, "alpaca")
  rows = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
  assert [r["answer"].decode() for r in rows] == [str(i) for i in range(row_index.CHUNK + 44)] + ["last"]
  assert source.num_input_examples("train") == len(rows) and rows[0]["split"] == b"train"
