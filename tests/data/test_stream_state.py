"""Saved stream positions (itjax.data.stream_state): a restored stream continues exactly, for every kind of
source and stage (seqio tasks, procedural and JSONL sources, the shared JSONL stream, few-shot, dedup,
decontamination, both packers), its counts carry on, and its cost does not grow with the position."""

import json
import time

import numpy as np
import pytest
import seqio

from itjax.data.jsonl import register_jsonl_task
from itjax.data.pipeline import numpy_batches, train_dataset
from itjax.data.quality import NgramIndex
from itjax.data.stream_state import HostStream
from itjax.data.stream_stats import StreamStats
from itjax.errors import UserError

LENGTHS = {"inputs": 48, "targets": 16}


def _write(path, tag, n, dup_every=0):
  with open(path, "w") as f:
    for i in range(n):
      j = i % dup_every if dup_every else i
      f.write(json.dumps({"prompt": f"{tag} item {j}: yes or no?", "completion": "yes" if j % 2 else "no"}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def jsonl_mixture(tmp_path_factory):
  d = tmp_path_factory.mktemp("stream_state")
  names = register_jsonl_task("st_one", {"train": _write(d / "one.jsonl", "one", 40)}, "prompt_completion")
  names += register_jsonl_task("st_two", {"train": _write(d / "two.jsonl", "two", 300, dup_every=120)},
                               "prompt_completion")
  names += register_jsonl_task("st_chat", {"train": _chat(d / "chat.jsonl", 30)}, "chat")
  seqio.MixtureRegistry.add("st_shared", [(names[0], 1.0), (names[1], 3.0)])
  seqio.MixtureRegistry.add("st_all", [(names[0], 1.0), (names[1], 3.0), (names[2], 1.0)])
  yield names
  for m in ("st_shared", "st_all"):
    seqio.MixtureRegistry.remove(m)
  for n in names:
    seqio.TaskRegistry.remove(n)


def _chat(path, n):
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"messages": [{"role": "user", "content": f"hello {i}"},
                                       {"role": "assistant", "content": f"hi {i}"},
                                       {"role": "user", "content": "again?"},
                                       {"role": "assistant", "content": "yes"}]}) + "\n")
  return str(path)


def _stream(name, *, stats=None, batch=4, **kwargs):
  side = []
  ds = train_dataset(name, kwargs.pop("lengths", LENGTHS), batch, seed=kwargs.pop("seed", 5), stats=stats,
                     side_state=side, **kwargs)
  return numpy_batches(ds, stats, side)


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


CASES = {
    "seqio tasks (procedural), best-fit": ("proc_heldout_nli", {}),
    "few-shot exemplars": ("proc_add_fs_noopt", {"lengths": {"inputs": 160, "targets": 16}}),
    "seqio packer": ("proc_heldout_nli", {"packer": "seqio"}),
    "unpacked": ("proc_heldout_nli", {"pack": False}),
    "shared JSONL stream": ("st_shared", {}),
    "JSONL + chat tasks": ("st_all", {}),
    "dedup": ("st_all", {"dedup": True}),
}


SLOW_CASES = ("seqio packer", "unpacked")  # make test keeps best-fit packing; these run with -m slow


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES])
def test_a_restored_stream_continues_exactly(jsonl_mixture, case):
  name, kwargs = CASES[case]
  a = _stream(name, stats=StreamStats(), **kwargs)
  for _ in range(7):
    next(a)
  blob = a.state()
  want = [next(a) for _ in range(6)]
  b = _stream(name, stats=StreamStats(), **kwargs)
  b.restore(blob, "test")
  for x, y in zip(want, (next(b) for _ in range(6)), strict=True):
    _equal(x, y)


def test_decontamination_is_restored_too(jsonl_mixture):
  index = NgramIndex(["one item 3: yes or no?"], n=4)
  a = _stream("st_shared", decontaminate=index, stats=StreamStats())
  for _ in range(5):
    next(a)
  blob = a.state()
  want = [next(a) for _ in range(4)]
  b = _stream("st_shared", decontaminate=index, stats=StreamStats())
  b.restore(blob, "test")
  for x in want:
    _equal(x, next(b))
  assert a.stats.as_dict()["decontaminated"] > 0


@pytest.mark.slow
def test_counts_carry_across_a_restore(jsonl_mixture):
  """The counts a run reports after resuming are those of an uninterrupted run (examples read ahead are in the
  saved state, so they are not counted again): compared after the same batches, over a host of two shards."""
  def host(stats):
    return HostStream({i: _stream("st_all", stats=stats, dedup=True, shard_index=i, num_shards=2)
                       for i in range(2)}, 2, stats, (0, 1))

  whole, first = StreamStats(), StreamStats()
  ref, a = host(whole), host(first)
  for _ in range(9):
    next(ref)
    next(a)
  blobs = a.state()
  assert sorted(blobs) == ["counts-process-00000-of-00001.json", "shard-00000-of-00002.tfdata",
                           "shard-00001-of-00002.tfdata"]
  resumed = StreamStats()
  b = host(resumed)
  b.restore(blobs.get, sorted(blobs), "test")
  for _ in range(6):
    _equal(next(ref), next(b))
  time.sleep(1.0)  # both read ahead the same way once idle
  got, want = resumed.as_dict(), whole.as_dict()
  assert got["examples_trained"] == want["examples_trained"] > 0
  assert got["dedup_dropped"] > 0 and got["packing"]["rows"] > 0
  for key in ("examples", "chat_examples", "dedup_examples", "dedup_dropped"):
    assert abs(got[key] - want[key]) <= 0.1 * want[key], (key, got[key], want[key])


def test_a_state_that_does_not_fit_the_stream_is_a_user_error(jsonl_mixture):
  a = _stream("st_shared")
  next(a)
  blob = a.state()
  other = _stream("proc_heldout_nli")
  with pytest.raises(UserError, match=r"^ckpt/data: the saved data stream does not match this run's stream .*"
                                      r"stream_settings.resume='fresh'"):
    other.restore(blob, "ckpt/data")
  with pytest.raises(UserError, match="no saved state for data shard 0 of 1"):
    HostStream({0: _stream("st_shared")}, 1, None, (0, 1)).restore(lambda name: None, [], "ckpt/data")


def _size_and_time(position: int, batches):
  a = _stream("st_shared", batch=1, lengths={"inputs": 24, "targets": 8})
  for _ in range(position):
    next(a)
  blob = a.state()
  want = [next(a) for _ in range(batches)]
  b = _stream("st_shared", batch=1, lengths={"inputs": 24, "targets": 8})
  t0 = time.perf_counter()
  b.restore(blob, "test")
  first = next(b)
  seconds = time.perf_counter() - t0
  for x, y in zip(want, [first] + [next(b) for _ in range(batches - 1)], strict=True):
    _equal(x, y)
  return len(blob), seconds


@pytest.mark.parametrize("far", [pytest.param(20_000, id="20k"),
                                 pytest.param(100_000, id="100k", marks=pytest.mark.slow)])
def test_resuming_far_costs_what_resuming_near_costs(jsonl_mixture, far):
  """The saved state (and so the restore) does not grow with the position: the same size within a few percent
  at batch 100 and at batch `far`, restored and at its next batch in seconds, equal to the uninterrupted stream."""
  near_size, near_s = _size_and_time(100, 20)
  far_size, far_s = _size_and_time(far, 20)
  assert abs(far_size - near_size) <= 0.05 * near_size, (near_size, far_size)
  assert far_s < 30 and near_s < 30, (near_s, far_s)
