"""Chat training: loss on every assistant turn (and its EOS) only, packed or not; truncation; the enc-dec split."""

import json

import numpy as np
import pytest
import seqio

from itjax.data import chat, jsonl
from itjax.data.pipeline import train_dataset
from itjax.data.stream_stats import StreamStats
from itjax.errors import UserError
from itjax.models.features import ENC_DEC, FeatureLayout

T5_LAYOUT = FeatureLayout(ENC_DEC, inputs_eos_id=1)  # a T5's features (EOS 1 ends the encoder inputs)

VOCAB = seqio.ByteVocabulary()
EOS = 1
LENGTHS = {"inputs": 96, "targets": 32}
CONV = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "six"},
        {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]
SHORT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]  # packs with CONV: 23 + 103
SYSTEM = {"role": "system", "content": "Be brief."}


def _enc(text):
  return list(VOCAB.encode(text))


def expected_row(conv):
  """(tokens, loss weights) of a conversation as the decoder-only model must see it, built piece by piece."""
  tokens, weights = [], []
  for turn in conv:
    if turn["role"] == "system":
      piece, w = _enc(f"System: {turn['content']}\n"), 0
    elif turn["role"] == "user":
      piece, w = _enc(f"User: {turn['content']}\nAssistant:\n"), 0
    else:
      piece, w = _enc(turn["content"]) + [EOS], 1
    tokens += piece
    weights += [w] * len(piece)
  return tokens, weights


@pytest.fixture
def chat_task(tmp_path):
  """register(conversations) -> a registered chat task's name; unregistered afterwards."""
  names = []

  def register(convs, **kw):
    path = tmp_path / f"chat{len(names)}.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    (name,) = jsonl.register_jsonl_task(f"chat_train_{len(names)}", {"train": str(path), "validation": str(path)},
                                        "chat", **kw)
    names.append(name)
    return name

  yield register
  for n in names:
    seqio.TaskRegistry.remove(n)


def _segments(batch):
  """Every packed segment's (tokens, loss weights, input tokens) of a decoder-only batch."""
  out = []
  for row in range(len(batch["decoder_target_tokens"])):
    seg = batch["decoder_segment_ids"][row] if "decoder_segment_ids" in batch else (
        batch["decoder_target_tokens"][row] > 0).astype(int)
    for s in sorted(set(seg[seg > 0].tolist())):
      out.append(tuple(batch[k][row][seg == s].tolist() for k in ("decoder_target_tokens", "decoder_loss_weights",
                                                                  "decoder_input_tokens")))
  return out


def test_three_turn_chat_unpacked_has_loss_on_every_assistant_turn_only(chat_task):
  name = chat_task([CONV])
  batch = next(train_dataset(name, LENGTHS, 2, seed=0, pack=False).as_numpy_iterator())
  tokens, weights = expected_row(CONV)
  for row in range(2):
    n = len(tokens)
    assert batch["decoder_target_tokens"][row, :n].tolist() == tokens
    assert batch["decoder_loss_weights"][row, :n].tolist() == weights  # token by token
    assert not batch["decoder_target_tokens"][row, n:].any() and not batch["decoder_loss_weights"][row, n:].any()
    assert batch["decoder_input_tokens"][row, :n].tolist() == [0] + tokens[:-1]
  # Three weighted runs: "4" EOS, "six" EOS, "You're welcome." EOS.
  w = batch["decoder_loss_weights"][0]
  assert int(np.sum(np.diff(np.concatenate([[0], w])) == 1)) == 3 and int(w.sum()) == 2 + 4 + 16


@pytest.mark.parametrize("packer", ["best_fit", "seqio"])
def test_packed_chat_segments_keep_their_masks(chat_task, packer):
  convs = [CONV, SHORT, [SYSTEM, *SHORT]]
  name = chat_task(convs)
  want = {tuple(expected_row(c)[0]): expected_row(c)[1] for c in convs}
  batches = list(train_dataset(name, LENGTHS, 4, seed=0, packer=packer).take(3).as_numpy_iterator())
  segments = [s for b in batches for s in _segments(b)]
  assert len(segments) > 16  # rows really hold several conversations
  for tokens, weights, inputs in segments:
    assert weights == want[tuple(tokens)]
    assert inputs == [0] + list(tokens[:-1])  # BOS per segment: no attention across conversations' boundary tokens


def test_chat_mixed_with_instruction_tasks_one_converter(chat_task):
  """Chat and non-chat tasks share a mixture; non-chat segments keep their targets-only loss."""
  name = chat_task([CONV])
  seqio.MixtureRegistry.add("chat_and_add", [(name, 1.0), ("proc_add_zs_noopt", 1.0)])
  try:
    batch = next(train_dataset("chat_and_add", LENGTHS, 8, seed=2).as_numpy_iterator())
  finally:
    seqio.MixtureRegistry.remove("chat_and_add")
  tokens, weights = expected_row(CONV)
  kinds = set()
  for seg_tokens, seg_weights, _ in _segments(batch):
    if list(seg_tokens) == tokens:
      assert list(seg_weights) == weights
      kinds.add("chat")
    else:  # an instruction example: one weighted run, the targets, ending the segment with EOS
      w = np.array(seg_weights)
      first = int(np.argmax(w))
      assert w[first:].all() and not w[:first].any() and seg_tokens[-1] == EOS and first > 0
      kinds.add("instruction")
  assert kinds == {"chat", "instruction"}


def test_over_long_history_loses_oldest_turns_and_is_counted(chat_task):
  u1, a1, u2, a2, u3 = (expected_row([t])[0] for t in CONV[:5])
  system = expected_row([SYSTEM])[0]
  render = lambda conv, n: chat.render_conversation(  # noqa: E731
      np.array([t["role"] for t in conv]), np.array([t["content"] for t in conv]), VOCAB, n)
  # Everything fits: nothing lost.
  out = render([SYSTEM, *CONV], None)
  assert out["inputs"].numpy().tolist() == system + u1 + a1 + u2 + a2 + u3 and int(out[chat.TURNS_DROPPED]) == 0
  # The system prompt and the last exchange fit: the two oldest exchanges (4 turns) go.
  limit = len(system + u3)
  out = render([SYSTEM, *CONV], limit)
  assert out["inputs"].numpy().tolist() == system + u3
  assert out[chat.LOSS_MASK].numpy().tolist() == [0] * limit
  assert (int(out[chat.TURNS_DROPPED]), int(out[chat.TOKENS_CUT])) == (4, len(u1 + a1 + u2 + a2))
  # Whole exchanges only: with room for a2 + u3 but not u2, the history restarts at u3.
  out = render(CONV, len(a2 + u3) + 1)
  assert out["inputs"].numpy().tolist() == u3
  # A system prompt that does not fit with the last exchange is dropped rather than the exchange.
  long_system = {"role": "system", "content": "You are a helpful assistant who answers briefly and politely."}
  assert len(expected_row([long_system])[0] + u3) > len(u2 + a2 + u3)
  out = render([long_system, *CONV], len(u2 + a2 + u3))
  assert out["inputs"].numpy().tolist() == u2 + a2 + u3 and int(out[chat.TURNS_DROPPED]) == 3
  assert out[chat.LOSS_MASK].numpy().tolist() == [0] * len(u2) + [1] * len(a2) + [0] * len(u3)
  # The last user turn alone is too long: it keeps its end (with the "Assistant:" cue).
  out = render(CONV, 20)
  assert out["inputs"].numpy().tolist() == u3[-20:] and VOCAB.decode(u3[-20:]).endswith("\nAssistant:\n")
  assert int(out[chat.TOKENS_CUT]) == len(u1 + a1 + u2 + a2) + len(u3) - 20
  # In the training stream the counts add up.
  name = chat_task([CONV])
  stats = StreamStats()
  lengths = {"inputs": 20, "targets": 8}
  batch = next(train_dataset(name, lengths, 2, seed=0, pack=False, stats=stats).as_numpy_iterator())
  assert batch["decoder_target_tokens"][0, :20].tolist() == u3[-20:]
  # Targets trimmed to 8 with the EOS kept.
  assert batch["decoder_target_tokens"][0, 20:28].tolist() == _enc("You're welcome.")[:7] + [EOS]
  counts = stats.as_dict()
  assert counts["chat_examples"] >= 2 and counts["chat_examples_truncated"] == counts["chat_examples"]
  assert counts["chat_turns_dropped"] == 4 * counts["chat_examples"]


def test_enc_dec_chat_is_one_example_per_assistant_turn(chat_task):
  name = chat_task([CONV])
  stats = StreamStats()
  lengths = {"inputs": 96, "targets": 3}  # "six" + EOS is trimmed to "si" + EOS
  batch = next(train_dataset(name, lengths, 3, seed=0, pack=False, layout=T5_LAYOUT, stats=stats)
               .as_numpy_iterator())
  u1, a1, u2, a2, u3 = (expected_row([t])[0] for t in CONV[:5])
  want = [(u1, a1), (u1 + a1 + u2, _enc("si") + [EOS]), (u1 + a1 + u2 + a2 + u3, _enc("Yo") + [EOS])]
  for row, (enc, dec) in enumerate(want):  # the encoder reads the history and EOS
    assert batch["encoder_input_tokens"][row][batch["encoder_input_tokens"][row] > 0].tolist() == enc + [EOS]
    assert batch["decoder_target_tokens"][row][batch["decoder_target_tokens"][row] > 0].tolist() == dec
    assert batch["decoder_loss_weights"][row].tolist() == [1] * len(dec) + [0] * (3 - len(dec))
  counts = stats.as_dict()
  # Stages count as they read (ahead of the batches delivered): two extra examples and one cut token per conversation.
  assert 0 < counts["enc_dec_turn_examples"] <= 2 * counts["chat_examples"]
  assert counts["enc_dec_turn_examples"] == 2 * counts["enc_dec_turn_tokens_cut"]


def test_enc_dec_packed_chat_turns(chat_task):
  name = chat_task([CONV, SHORT])
  u1, a1, u2, a2, u3 = (expected_row([t])[0] for t in CONV[:5])
  want = {(tuple(u1 + [EOS]), tuple(a1)), (tuple(u1 + a1 + u2 + [EOS]), tuple(a2)),
          (tuple(u1 + a1 + u2 + a2 + u3 + [EOS]), tuple(_enc("You're welcome.") + [EOS]))}
  pairs, multi = set(), False
  for batch in train_dataset(name, LENGTHS, 16, seed=0, layout=T5_LAYOUT).take(40).as_numpy_iterator():
    for row in range(16):
      es, ds_ = batch["encoder_segment_ids"][row], batch["decoder_segment_ids"][row]
      ids = set(ds_[ds_ > 0].tolist())
      assert ids == set(es[es > 0].tolist())
      multi |= len(ids) > 1
      for s in ids:
        pairs.add((tuple(batch["encoder_input_tokens"][row][es == s].tolist()),
                   tuple(batch["decoder_target_tokens"][row][ds_ == s].tolist())))
    if want <= pairs and multi:
      break
  assert want <= pairs and multi
  assert pairs <= want | {(tuple(expected_row(SHORT[:1])[0] + [EOS]), tuple(_enc("Yo") + [EOS]))}  # nothing else


def test_eval_split_prompts_are_the_history(chat_task):
  name = chat_task([CONV])
  (ex,) = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator()
  tokens, _ = expected_row(CONV)
  answer = _enc("You're welcome.") + [EOS]
  assert ex["inputs"].tolist() == tokens[:-len(answer)] and ex["targets"].tolist() == answer
  assert ex["inputs_pretokenized"].decode() == ("User: What is 2+2?\nAssistant:\n4\nUser: And 3+3?\nAssistant:\nsix\n"
                                                "User: Thanks!\nAssistant:\n")
  assert ex["targets_pretokenized"] == b"You're welcome." and ex["template_id"] == 0


def test_chat_tasks_take_no_templates(tmp_path):
  path = tmp_path / "c.jsonl"
  path.write_text(json.dumps({"messages": SHORT}) + "\n")
  with pytest.raises(UserError, match="templates do not apply"):
    jsonl.register_jsonl_task("chat_tmpl", {"train": str(path)}, "chat", templates=list(jsonl.CHAT_TEMPLATES))
