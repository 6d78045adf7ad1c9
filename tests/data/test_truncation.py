"""Truncation policies: what survives of an over-long prompt, what eval rows show, and the run default."""

import pytest
import seqio

from itjax.data import truncation as trunc
from itjax.data.pipeline import train_examples
from itjax.data.sources import procedural_source
from itjax.data.stream_stats import StreamStats
from itjax.data.tasks import register_instruction_task
from itjax.data.templates import Template
from itjax.errors import UserError
from itjax.eval.generate import eval_examples

PASSAGE = " ".join(f"word{i}" for i in range(60))  # ~420 bytes
QUESTION = "Is the sky green?"
OPTIONS = "\n\nOPTIONS:\n- yes\n- no\n"
TEMPLATE = Template("Read this.\n{passage}\nQuestion: {question}")
LENGTHS = {"inputs": 96, "targets": 16}


def _example(rng):
  return {"passage": PASSAGE, "question": QUESTION, "answer": "no", "options": ["yes", "no"]}


def _register(name, policy, templates=(TEMPLATE,)):
  for t in [n for n in seqio.TaskRegistry.names() if n.startswith(name + "_")]:
    seqio.TaskRegistry.remove(t)
  src = procedural_source(_example, ("passage", "question"), {"train": 4, "test": 2}, seed=0)
  return register_instruction_task(name, "qa", src, list(templates), fields=("passage", "question"),
                                   has_options=True, truncation=policy)


def _eval_rows(task, **kw):
  return eval_examples(task, LENGTHS, split="test", **kw)


def _full_prompt():
  return f"Read this.\n{PASSAGE}\nQuestion: {QUESTION}\n\nOPTIONS:\n- yes\n- no\n"


@pytest.mark.parametrize("policy", [None, "keep_start", "keep_end", "keep_both_ends", "field:passage"])
def test_policies_cut_to_the_budget(policy):
  names = _register(f"trunc_{str(policy).replace(':', '_')}", policy)
  opt = next(n for n in names if n.endswith("_zs_opt"))
  row = _eval_rows(opt)[0]
  full = _full_prompt()
  assert row["inputs_untruncated"] == full
  assert len(row["input_ids"]) == LENGTHS["inputs"]
  assert row["inputs_cut_tokens"] == len(full.encode()) - LENGTHS["inputs"]
  seen = row["inputs"]
  assert seen.encode() == bytes(i - 3 for i in row["input_ids"])  # ByteVocabulary: id = byte + 3
  if policy in (None, "keep_start"):
    assert full.startswith(seen) and QUESTION not in seen
  elif policy == "keep_end":
    assert full.endswith(seen) and QUESTION in seen and "OPTIONS" in seen and "Read this." not in seen
  elif policy == "keep_both_ends":
    head = LENGTHS["inputs"] // 4
    assert full.startswith(seen[:head]) and full.endswith(seen[head:]) and "OPTIONS" in seen
  else:  # only the passage is shortened: instruction, question and options all survive
    assert seen.startswith("Read this.\nword0 word1") and seen.endswith(f"Question: {QUESTION}{OPTIONS}")


def test_prompts_that_fit_are_untouched():
  names = _register("trunc_fit", "field:passage")
  rows = eval_examples(names[0], {"inputs": 1024, "targets": 16}, split="test")
  assert rows[0]["inputs"] == _full_prompt() and "inputs_untruncated" not in rows[0]
  assert rows[0]["input_ids"] == [b + 3 for b in _full_prompt().encode()]


def test_run_default_applies_to_tasks_without_a_policy():
  unset = _register("trunc_unset", None)[0]
  fixed = _register("trunc_fixed", "keep_start")[0]
  assert QUESTION in _eval_rows(unset, truncation="keep_end")[0]["inputs"]
  assert QUESTION not in _eval_rows(fixed, truncation="keep_end")[0]["inputs"]  # its own policy wins


def test_training_stream_cuts_and_counts():
  name = _register("trunc_train", "keep_end")[0]
  stats = StreamStats()
  ex = next(train_examples(name, LENGTHS, seed=0, stats=stats).as_numpy_iterator())
  text = bytes(i - 3 for i in ex["inputs"]).decode()
  assert len(ex["inputs"]) == LENGTHS["inputs"] and text.endswith(f"Question: {QUESTION}{OPTIONS}")
  assert stats.as_dict()["inputs_truncated"] >= 1


def test_bad_policies_are_one_line_errors():
  with pytest.raises(UserError, match="choose keep_start"):
    _register("trunc_bad", "keep_middle")
  with pytest.raises(UserError, match="no template uses"):
    _register("trunc_nofield", "field:context")
  with pytest.raises(UserError, match="per task"):
    trunc.run_default("field:passage")


def test_mixture_of_policies_cuts_each_task_by_its_own_and_keeps_the_rates():
  """Tasks sharing a policy are tokenized and cut together after sampling (itjax.data.pipeline); a mixture of
  several policies samples each group, then its task, at the tasks' own rates."""
  policies = ["keep_start", "keep_end", "field:passage", None]  # None: the run's default, keep_end here
  names = []
  for i, policy in enumerate(policies):
    template = Template(f"T{i} read this.\n{{passage}}\nQ{i}: {{question}}")
    names.append(_register(f"trunc_mix{i}", policy, templates=(template,))[1])  # _zs_noopt
  rates = [1.0, 2.0, 3.0, 4.0]
  seqio.MixtureRegistry.add("trunc_mix", list(zip(names, rates, strict=True)))
  try:
    stats = StreamStats()
    seen = [0] * len(names)
    for ex in train_examples("trunc_mix", LENGTHS, seed=1, stats=stats, truncation="keep_end").take(2000) \
        .as_numpy_iterator():
      text = bytes(i - 3 for i in ex["inputs"]).decode().rstrip("\n")  # the prompt ends with a newline
      assert len(ex["inputs"]) == LENGTHS["inputs"]
      found = [i for i in range(len(names)) if text.startswith(f"T{i} ") or text.endswith(f"Q{i}: {QUESTION}")]
      assert len(found) == 1, text
      i = found[0]
      seen[i] += 1
      if policies[i] == "keep_start":
        assert f"Q{i}:" not in text
      elif policies[i] == "field:passage":
        assert text.startswith(f"T{i} read this.\nword0 ") and text.endswith(f"\nQ{i}: {QUESTION}")
      else:
        assert not text.startswith("T") and text.endswith(f"Q{i}: {QUESTION}")
    assert stats.as_dict()["inputs_truncated"] == stats.as_dict()["examples"] >= 2000
    for n, rate in zip(seen, rates, strict=True):  # binomial: 2000 draws, p = rate / 10
      p = rate / sum(rates)
      assert abs(n - 2000 * p) < 4 * (2000 * p * (1 - p)) ** 0.5, (seen, rates)
  finally:
    seqio.MixtureRegistry.remove("trunc_mix")
