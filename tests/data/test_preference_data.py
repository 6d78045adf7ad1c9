"""Preference data: JSONL pairs and rankings validated line by line (file:line, field; counted skips), prompts
templated as SFT templates them, pairs packed so chosen and rejected never share a segment, and a stream that
resumes exactly from its saved state."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from itjax.data import preference as pref
from itjax.data import templates as tmpl
from itjax.data.chat_format import chat_tokens
from itjax.data.stream_state import ShardStream
from itjax.data.stream_stats import StreamStats
from itjax.data.vocab import REGISTERED
from itjax.errors import UserError
from itjax.models.features import PREFERENCE_IDS, PREFIX_LM_LAYOUT, preference_lengths

LENGTHS = {"inputs": 40, "targets": 12}


def _write(path, lines):
  path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
  return str(path)


BAD_PAIRS = [
    ({"prompt": "p", "chosen": "a"}, "jsonl_missing", "field 'rejected': missing"),
    ({"prompt": "p", "chosen": "a", "rejected": 3}, "wrong_type", "field 'rejected': expected a string or a list"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, pref.SAME_RESPONSE, "field 'rejected': equals chosen"),
    ({"prompt": "p", "chosen": " ", "rejected": "b"}, "empty_target", "field 'chosen': empty target"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     pref.PROMPT_MISMATCH, "field 'rejected': the conversation before the last reply differs"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}], "rejected": "b"},
     "bad_role", "field 'chosen[1].role'"),
    ({"chosen": "abc", "rejected": "xyz"}, "missing_field", "field 'prompt': missing, and chosen and rejected share"),
]


@pytest.mark.parametrize("line, reason, message", BAD_PAIRS)
def test_bad_pair_lines_name_file_line_and_field(tmp_path, line, reason, message):
  path = _write(tmp_path / "p.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, line])
  with pytest.raises(UserError, match=f"^{path}:2: " + message.replace("(", r"\(").replace("[", r"\[")):
    pref.PreferenceSource(path).rows("train")


def test_skip_policy_counts_every_bad_line(tmp_path):
  lines = [{"prompt": "ok", "chosen": "a", "rejected": "b"}, "{not json", *[line for line, _, _ in BAD_PAIRS]]
  src = pref.PreferenceSource(_write(tmp_path / "p.jsonl", lines), on_error="skip")
  assert len(src.rows("train")) == 1
  want = {"invalid_json": 1, "wrong_type": 1, pref.SAME_RESPONSE: 1, "empty_target": 1, pref.PROMPT_MISMATCH: 1,
          "bad_role": 1, "missing_field": 2}
  assert src.skipped == want


def test_formats_text_chat_and_implicit_prompt(tmp_path):
  trl = pytest.importorskip("trl.data_utils")
  hh_chosen, hh_rejected = "\n\nHuman: What is 2+2?\n\nAssistant: 4", "\n\nHuman: What is 2+2?\n\nAssistant: 5"
  uf = {"prompt": "ignored", "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away"}]}
  rows = pref.PreferenceSource(_write(tmp_path / "p.jsonl", [
      {"prompt": "Say hi", "chosen": "hi", "rejected": "no"}, uf,
      {"chosen": hh_chosen, "rejected": hh_rejected}])).rows("train")
  assert rows[0] == pref.PreferenceRow("Say hi", ("hi", "no"), (1, 2))
  assert rows[1] == pref.PreferenceRow((("user", "Hi?"),), ("Hello", "Go away"), (1, 2))
  ref = trl.extract_prompt({"chosen": hh_chosen, "rejected": hh_rejected})  # TRL's implicit prompt
  assert rows[2] == pref.PreferenceRow(ref["prompt"], (ref["chosen"], ref["rejected"]), (1, 2))


def test_rankings_give_every_pair_of_different_ranks(tmp_path):
  path = _write(tmp_path / "r.jsonl", [
      {"prompt": "q", "responses": ["a", "b", "c", "d"], "ranking": [2, 1, 4, 3]},
      {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [1, 1, 2]},  # a tie makes no pair
      {"prompt": "q", "responses": ["a", "b"], "ranking": [1]},
      {"prompt": "q", "responses": ["a", "b"], "ranking": [1, 1]},
      {"prompt": "q", "responses": ["a", "a"], "ranking": [1, 2]},
      {"prompt": "q", "responses": ["a", "b"], "ranking": [1, True]}])
  src = pref.PreferenceSource(path, "ranking", on_error="skip")
  rows = src.rows("train")
  assert len(rows[0].pairs()) == 6 and set(rows[0].pairs()) == {(1, 0), (1, 3), (1, 2), (0, 3), (0, 2), (3, 2)}
  assert rows[1].pairs() == [(0, 2), (1, 2)]
  assert src.skipped == {pref.BAD_RANKING: 3, pref.SAME_RESPONSE: 1}
  with pytest.raises(UserError, match=r"r\.jsonl:3: field 'ranking': has 1 ranks for 2 responses"):
    pref.PreferenceSource(path, "ranking").rows("train")


def test_text_prompts_render_as_the_sft_templates_do():
  t = tmpl.Template("Question: {instruction}\n\nAnswer:")
  fields = {**dict.fromkeys(("instruction", "input", "input_clause", "input_block", "input_labeled", "input_plain"),
                            ""), "instruction": "  What is 1 + 1? ", "answer": "", "options": []}
  want, _ = tmpl.render(t, {k: tf.constant(v) for k, v in fields.items()}, tmpl.ZERO_SHOT_NOOPT)
  assert pref.prompt_text("  What is 1 + 1? ", t) == want.numpy().decode()


def _register(name, rows, template=pref.PROMPT_TEMPLATE):
  return pref.register_preference_task(name, pref.PreferenceSource(rows=rows), template=template)


def _decode(ids):
  return REGISTERED.decode([int(x) for x in ids])


def test_packed_rows_keep_pairs_apart_and_weigh_only_responses():
  rows = [pref.PreferenceRow(f"q{i}?", (f"good{i}", f"bad{i}x"), (1, 2)) for i in range(6)]
  rows.append(pref.PreferenceRow((("system", "be nice"), ("user", "hi")), ("hello", "bye"), (1, 2)))
  _register("test_pref_layout", {"train": rows})
  ds = pref.preference_dataset("test_pref_layout", LENGTHS, 2, seed=None, layout=PREFIX_LM_LAYOUT)
  seen = {}
  for batch in ds.as_numpy_iterator():
    assert batch["decoder_target_tokens"].shape[1] == preference_lengths(PREFIX_LM_LAYOUT, LENGTHS)[PREFERENCE_IDS]
    for r in range(len(batch[PREFERENCE_IDS])):
      ids, seg = batch[PREFERENCE_IDS][r], batch["decoder_segment_ids"][r]
      np.testing.assert_array_equal(ids, seg)  # chosen and rejected: separate segments
      for k in range(1, ids.max() // 2 + 1):
        sides = []
        for side in (2 * k - 1, 2 * k):
          at = ids == side
          targets, inputs = batch["decoder_target_tokens"][r][at], batch["decoder_input_tokens"][r][at]
          np.testing.assert_array_equal(batch["decoder_positions"][r][at], np.arange(at.sum()))
          np.testing.assert_array_equal(inputs, np.concatenate([[0], targets[:-1]]))  # shifted within the segment
          w = batch["decoder_loss_weights"][r][at]
          assert targets[w == 1][-1] == REGISTERED.eos_id and (np.diff(w) >= 0).all()  # prompt, then response
          sides.append((_decode(targets[w == 0]), _decode(targets[w == 1])))
        assert sides[0][0] == sides[1][0]  # one prompt
        seen[sides[0][0]] = (sides[0][1], sides[1][1])
  assert seen["q3?\n"] == ("good3", "bad3x")
  want_chat = REGISTERED.decode(chat_tokens([("system", "be nice"), ("user", "hi")], REGISTERED.encode, 1))
  assert seen[want_chat] == ("hello", "bye") and len(seen) == 7


def test_truncation_keeps_the_prompt_end_and_eos_and_drops_tied_pairs():
  long_prompt = "x" * 40 + " the question?"
  rows = [pref.PreferenceRow(long_prompt, ("A" * 30, "B" * 30), (1, 2)),
          pref.PreferenceRow("q", ("same" * 5 + "1", "same" * 5 + "2"), (1, 2))]  # equal once cut to 12
  _register("test_pref_cut", {"train": rows})
  stats = StreamStats()
  batches = list(pref.preference_dataset("test_pref_cut", LENGTHS, 1, seed=None, layout=PREFIX_LM_LAYOUT,
                                         stats=stats).as_numpy_iterator())
  counts = stats.as_dict()
  assert (counts["preference_pairs"], counts["preference_prompts_truncated"], counts["preference_pairs_tied"],
          counts["preference_responses_truncated"]) == (2, 1, 1, 2)
  assert len(batches) == 1
  b = batches[0]
  at = b[PREFERENCE_IDS][0] == 1
  t, w = b["decoder_target_tokens"][0][at], b["decoder_loss_weights"][0][at]
  assert _decode(t[w == 0]).endswith(" the question?\n") and (w == 0).sum() == LENGTHS["inputs"]
  assert (w == 1).sum() == LENGTHS["targets"] and t[w == 1][-1] == REGISTERED.eos_id


def test_stream_resumes_exactly_from_saved_state():
  rows = [pref.PreferenceRow(f"What is {i}?", (str(i), str(i + 1)), (1, 2)) for i in range(50)]
  _register("test_pref_resume", {"train": rows})

  def stream():
    ds = pref.preference_dataset("test_pref_resume", LENGTHS, 2, seed=3, layout=PREFIX_LM_LAYOUT)
    from itjax.data import stream_state
    return ShardStream(ds.with_options(stream_state.iterator_options()).prefetch(2))

  a = stream()
  for _ in range(7):
    next(a)
  blob = a.state()
  want = [next(a) for _ in range(40)]  # past the first epoch: epoch 2 reshuffles
  b = stream()
  b.restore(blob, "test")
  for w in want:
    got = next(b)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


def test_non_preference_task_is_a_clear_error():
  with pytest.raises(UserError, match="task 'proc_add_zs_noopt' has no preference pairs"):
    pref.preference_dataset("proc_add_zs_noopt", LENGTHS, 2, seed=0, layout=PREFIX_LM_LAYOUT)


def test_tasks_show_lists_ranked_responses():
  from itjax.data.inspect_tasks import show_text
  _register("test_pref_show", {"validation": [pref.PreferenceRow("q?", ("b", "a", "c"), (2, 1, 3))]})
  text = show_text("test_pref_show", 1, "validation")
  assert "1 in validation, 3 pairs" in text and text.index("rank 1: a") < text.index("rank 2: b") < text.index("rank 3")


def test_sft_reads_a_preference_task_as_prompt_and_best_response():
  _register("test_pref_sft", {"train": [pref.PreferenceRow("q", ("worse", "best"), (2, 1))]})
  ex = next(iter(seqio.get_mixture_or_task("test_pref_sft").get_dataset(LENGTHS, "train", shuffle=False)))
  assert _decode(ex["inputs"]) == "q\n" and _decode(ex["targets"]) == "best"


def test_encoder_decoder_rows_give_each_sequence_its_own_prompt_copy():
  from itjax.models.features import FeatureLayout
  layout = FeatureLayout("enc_dec", inputs_eos_id=1)
  rows = [pref.PreferenceRow(f"q{i}?", (f"good{i}", f"bad{i}x"), (1, 2)) for i in range(5)]
  _register("test_pref_t5", {"train": rows})
  seen = {}
  for batch in pref.preference_dataset("test_pref_t5", LENGTHS, 2, seed=None, layout=layout).as_numpy_iterator():
    assert batch["encoder_input_tokens"].shape[1] == 2 * LENGTHS["inputs"]
    assert batch["decoder_target_tokens"].shape[1] == 2 * LENGTHS["targets"]
    for r in range(len(batch[PREFERENCE_IDS])):
      ids, eids = batch[PREFERENCE_IDS][r], batch["encoder_segment_ids"][r]
      for side in range(1, int(ids.max()) + 1):
        enc = batch["encoder_input_tokens"][r][eids == side]
        dec = batch["decoder_target_tokens"][r][ids == side]
        assert enc[-1] == 1 and (batch["decoder_loss_weights"][r][ids == side] == 1).all()
        np.testing.assert_array_equal(batch["encoder_positions"][r][eids == side], np.arange(len(enc)))
        seen.setdefault(_decode(enc[:-1]), []).append(_decode(dec))
  assert seen["q2?\n"] == ["good2", "bad2x"] and len(seen) == 5
