"""One Python-sampled stream for many JSONL tasks (itjax.data.shared_stream): the same rows and rendering as
each task's own pipeline, the mixture's rates, deterministic and resumable, sharded without overlap."""

import collections
import functools
import json
import logging

import numpy as np
import pytest
import seqio

from itjax.data import pipeline, row_index, shared_stream
from itjax.data.jsonl import register_jsonl_task
from itjax.data.pipeline import numpy_batches, train_dataset, train_examples
from itjax.data.pretemplated import register_pretemplated_dataset
from itjax.errors import UserError

LENGTHS = {"inputs": 64, "targets": 16}


def _text(ids) -> str:
  return bytes(int(i) - 3 for i in ids if i > 2).decode()  # ByteVocabulary: id = byte + 3


def _write(path, tag, n, bad=False):
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"prompt": f"{tag} item {i}: yes or no?", "completion": "yes" if i % 2 else "no"}) + "\n")
    if bad:
      f.write("{not json\n")
  return str(path)


@pytest.fixture()
def mixture(tmp_path):
  """Three JSONL tasks (one pre-templated, two plain) and a mixture of them at rates 1:2:5."""
  names = register_pretemplated_dataset("ss_pre", [_write(tmp_path / "ss_pre_a.jsonl", "preA", 30),
                                                   _write(tmp_path / "ss_pre_b.jsonl", "preB", 30)], cluster="c")
  names += register_jsonl_task("ss_one", {"train": _write(tmp_path / "one.jsonl", "one", 40)}, "prompt_completion")
  names += register_jsonl_task("ss_two", {"train": _write(tmp_path / "two.jsonl", "two", 25)}, "prompt_completion")
  seqio.MixtureRegistry.add("ss_mix", list(zip(names, [1.0, 2.0, 5.0], strict=True)))
  yield names
  seqio.MixtureRegistry.remove("ss_mix")
  for n in names:
    seqio.TaskRegistry.remove(n)


def _pairs(ds, n):
  return [(_text(x["inputs"]), _text(x["targets"])) for x in ds.take(n).as_numpy_iterator()]


def test_jsonl_tasks_share_one_stream(mixture):
  assert len({shared_stream.shared_key(seqio.get_mixture_or_task(n)) for n in mixture}) == 2  # pre-templated, plain
  assert shared_stream.shared_key(seqio.get_mixture_or_task(mixture[1])) == shared_stream.shared_key(
      seqio.get_mixture_or_task(mixture[2]))


@pytest.mark.parametrize("which", [0, 1])
def test_rows_and_rendering_equal_the_tasks_own_pipeline(mixture, which, monkeypatch):
  """A one-task stream yields exactly the examples of the task's own seqio pipeline (rendered alike: the same
  template choice, options and truncation), each about equally often."""
  name = mixture[which]
  task = seqio.get_mixture_or_task(name)
  own = task.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1)
  expected = collections.Counter((_text(x["inputs"]), _text(x["targets"])) for x in own.as_numpy_iterator())
  seqio.MixtureRegistry.add("ss_single", [(name, 1.0)])
  try:
    called = []
    monkeypatch.setattr(pipeline, "_text_stream", lambda *a, **k: called.append(a))  # the per-task path
    n = sum(expected.values())
    got = collections.Counter(_pairs(train_examples("ss_single", LENGTHS, seed=0), 10 * n))
  finally:
    seqio.MixtureRegistry.remove("ss_single")
  assert not called
  assert set(got) == set(expected) and max(got.values()) < 25  # ~10 each: a shuffle of repeated epochs


def test_rates_are_the_mixtures(mixture):
  counts = collections.Counter(p[0].split()[0] for p in _pairs(train_examples("ss_mix", LENGTHS, seed=1), 4000))
  counts = {"pre": counts["preA"] + counts["preB"], "one": counts["one"], "two": counts["two"]}
  for tag, rate in (("pre", 1.0), ("one", 2.0), ("two", 5.0)):
    p = rate / 8
    assert abs(counts[tag] - 4000 * p) < 4 * (4000 * p * (1 - p)) ** 0.5, counts


def test_deterministic_and_resumable(mixture):
  a = _pairs(train_examples("ss_mix", LENGTHS, seed=3), 300)
  assert a == _pairs(train_examples("ss_mix", LENGTHS, seed=3), 300)
  assert a != _pairs(train_examples("ss_mix", LENGTHS, seed=4), 300)
  full = list(train_dataset("ss_mix", LENGTHS, 4, seed=3).take(12).as_numpy_iterator())
  resumed = list(train_dataset("ss_mix", LENGTHS, 4, seed=3, start_batch=7).take(5).as_numpy_iterator())
  for x, y in zip(full[7:], resumed, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_hosts_see_disjoint_rows_and_all_of_them(mixture):
  seqio.MixtureRegistry.add("ss_two_only", [(mixture[2], 1.0)])
  try:
    seen = [set(_pairs(train_examples("ss_two_only", LENGTHS, seed=0, shard_index=i, num_shards=2), 100))
            for i in range(2)]
  finally:
    seqio.MixtureRegistry.remove("ss_two_only")
  assert not seen[0] & seen[1]
  assert {p[0].strip() for p in seen[0] | seen[1]} == {f"two item {i}: yes or no?" for i in range(25)}
  assert len(seen[0]) == 13 and len(seen[1]) == 12  # every other row


def test_a_task_with_no_rows_in_this_shard_leaves_the_mixture(tmp_path):
  names = register_jsonl_task("ss_tiny", {"train": _write(tmp_path / "tiny.jsonl", "tiny", 1)}, "prompt_completion")
  names += register_jsonl_task("ss_big", {"train": _write(tmp_path / "big.jsonl", "big", 10)}, "prompt_completion")
  seqio.MixtureRegistry.add("ss_sparse", [(names[0], 5.0), (names[1], 1.0)])
  try:
    shard1 = _pairs(train_examples("ss_sparse", LENGTHS, seed=0, shard_index=1, num_shards=2), 50)
  finally:
    seqio.MixtureRegistry.remove("ss_sparse")
    for n in names:
      seqio.TaskRegistry.remove(n)
  assert len(shard1) == 50 and all(p[0].startswith("big ") for p in shard1)


def test_a_bad_file_is_a_user_error_when_the_stream_is_built(tmp_path):
  names = register_jsonl_task("ss_bad", {"train": _write(tmp_path / "bad.jsonl", "bad", 5, bad=True)},
                              "prompt_completion")
  names += register_jsonl_task("ss_good", {"train": _write(tmp_path / "good.jsonl", "good", 5)}, "prompt_completion")
  seqio.MixtureRegistry.add("ss_badmix", [(n, 1.0) for n in names])
  try:
    with pytest.raises(UserError, match=r"bad\.jsonl:6: invalid JSON"):
      train_dataset("ss_badmix", LENGTHS, 4, seed=0)
  finally:
    seqio.MixtureRegistry.remove("ss_badmix")
    for n in names:
      seqio.TaskRegistry.remove(n)


def test_start_up_logs_its_progress(mixture, monkeypatch, caplog):
  monkeypatch.setattr(pipeline, "_Progress", functools.partial(pipeline._Progress, every=0.0))
  with caplog.at_level(logging.INFO, logger="itjax"):
    train_dataset("ss_mix", LENGTHS, 4, seed=0)
  assert "sizing the training tasks (validating files not in the scan cache): 3 of 3 tasks" in caplog.text
  assert "building the training stream: 3 of 3 tasks" in caplog.text


def test_a_file_changed_after_validation_is_a_user_error_from_the_stream(tmp_path, monkeypatch):
  monkeypatch.setattr(row_index, "MEM_CACHE_ROWS", 0)  # read the file again every epoch
  path = _write(tmp_path / "changing.jsonl", "chg", 6)
  names = register_jsonl_task("ss_chg", {"train": path}, "prompt_completion")
  seqio.MixtureRegistry.add("ss_chgmix", [(names[0], 1.0)])
  try:
    batches = numpy_batches(train_dataset("ss_chgmix", LENGTHS, 2, seed=0))
    next(batches)
    with open(path, "w") as f:
      f.write(json.dumps({"prompt": "fine", "completion": "yes"}) + "\n{broken\n")
    with pytest.raises(UserError, match=r"changing\.jsonl:2: invalid JSON.*changed after it was validated"):
      for _ in range(2000):  # past the rows already read ahead (1,024 a chunk)
        next(batches)
  finally:
    seqio.MixtureRegistry.remove("ss_chgmix")
    seqio.TaskRegistry.remove(names[0])
