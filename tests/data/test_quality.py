"""Dedup and 13-gram decontamination: Python and tf.data agree; counts are exact on known data."""

import json
import random

import pytest
import seqio
import tensorflow as tf

from itjax.cli import main
from itjax.data import quality as q
from itjax.data.pipeline import train_dataset
from itjax.data.sources import procedural_source
from itjax.data.tasks import register_instruction_task
from itjax.data.templates import Template as T
from itjax.data.vocab import REGISTERED

LONG = "the quick brown fox jumps over the lazy dog near the old river bank today"  # 15 words


def test_normalize_and_ngrams():
  assert q.normalize("  The  Quick, brown-fox!\n") == "the quick brown fox"
  grams = q.ngram_strings(LONG, 13)
  assert len(grams) == 3 and grams[0].split()[0] == "the" and all(len(g.split()) == 13 for g in grams)
  assert q.ngram_strings("Short text.", 13) == ["short text"]


@pytest.mark.parametrize("text,hit", [
    ("Intro. " + LONG.upper() + " and more", True),         # a shared 13-gram, case and punctuation aside
    ("the quick brown fox jumps over the lazy dog near the old", False),  # only 12 shared words
    ("Q: is the pen blue? A: yes", True),                    # a short eval prompt appears as a word run
    ("the pen is bluer", False),                             # not as whole words
    ("yes", False),                                          # eval answers match only through 13-grams
])
def test_python_and_tf_matching_agree(text, hit):
  index = q.NgramIndex([LONG, "Is the pen blue?"], long_only=["yes"])
  assert index.contains(text) is hit
  assert bool(index.tf_contaminated(tf.constant(text))) is hit


def _register(name, values, split_sizes):
  def gen(r: random.Random):
    v = values[r.randrange(len(values))]
    return {"x": v, "answer": v.upper()}

  return register_instruction_task(name, "q", procedural_source(gen, ("x",), split_sizes, seed=7), [T("Echo {x}")],
                                   fields=("x",), has_options=False)[0]


def test_scan_counts_duplicates_and_contamination_exactly():
  train = _register("quality_train", ["alpha", "beta", "gamma"], {"train": 30, "validation": 1})
  evals = _register("quality_eval", ["beta"], {"train": 1, "validation": 2})
  report = q.scan(train, [evals])
  rows = list(seqio.get_mixture_or_task(train).get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
  texts = [r["inputs_pretokenized"] + r["targets_pretokenized"] for r in rows]
  t = report["tasks"][train]
  assert t["examples"] == 30 and t["exact_duplicates"] == 30 - len(set(texts)) == 27
  assert t["contaminated"] == sum(b"beta" in x for x in texts) > 0


def test_train_stream_drops_contaminated_examples():
  train = _register("quality_train2", ["alpha", "beta"], {"train": 40, "validation": 1})
  evals = _register("quality_eval2", ["beta"], {"train": 1, "validation": 1})
  index = q.eval_index([evals])
  vocab = REGISTERED
  ds = train_dataset(train, {"inputs": 16, "targets": 8}, 4, seed=0, pack=False, decontaminate=index)
  seen = set()
  for b in ds.take(10).as_numpy_iterator():
    for row in b["decoder_target_tokens"]:
      seen.add(vocab.decode([int(t) for t in row if t > 1]))
  assert any("alpha" in s for s in seen) and not any("beta" in s for s in seen)
  plain = train_dataset(train, {"inputs": 16, "targets": 8}, 4, seed=0, pack=False)
  assert any(b"beta" in vocab.decode([int(t) for t in row if t > 1]).encode()
             for b in plain.take(10).as_numpy_iterator() for row in b["decoder_target_tokens"])


def test_quality_cli(capsys, tmp_path):
  out = tmp_path / "q.json"
  assert main(["tasks", "quality", "proc_add_zs_noopt", "--against", "proc_heldout_nli_eval", "--max_examples",
               "50", "--output", str(out), "--inputs_length", "20", "--targets_length", "8"]) == 0
  text = capsys.readouterr().out
  assert "proc_add_zs_noopt" in text and "total" in text
  totals = json.loads(out.read_text())["totals"]
  assert totals["contaminated"] == 0 and totals["examples"] == 50
  # "Compute the sum of a and b." renders to more than 20 bytes; "What is a + b?" does not.
  assert 0 < totals["truncated"] < 50


def test_sharded_reading_is_disjoint_and_complete():
  def gen(r: random.Random):
    v = str(r.getrandbits(64))  # unique per example, so content identifies it
    return {"x": v, "answer": v}

  name = register_instruction_task("shard_check", "q", procedural_source(gen, ("x",), {"train": 50, "validation": 37},
                                                                         seed=3), [T("Echo {x}")], fields=("x",),
                                   has_options=False)[0]
  task = seqio.get_mixture_or_task(name)

  def rows(shard):
    ds = task.get_dataset(None, split="validation", shuffle=False, shard_info=shard)
    return [r["inputs_pretokenized"] for r in ds.as_numpy_iterator()]

  everything = rows(None)
  a, b = rows(seqio.ShardInfo(0, 2)), rows(seqio.ShardInfo(1, 2))
  assert len(everything) == 37 and len(set(everything)) == 37
  assert a and b and not set(a) & set(b)
  assert sorted(a + b) == sorted(everything)


@pytest.mark.parametrize("task,lengths", [("proc_add_zs_noopt", {"inputs": 12, "targets": 2}),
                                          ("proc_add_fs_noopt", {"inputs": 40, "targets": 16})])
def test_stream_counts_exactly_the_examples_it_truncates(task, lengths):
  """The stream's counters against each example's own untrimmed lengths (few-shot: before the left cut)."""
  from itjax.data.pipeline import _counts
  from itjax.data.stream_stats import StreamStats

  t = seqio.get_mixture_or_task(task)
  full = list(t.get_dataset(None, split="train", shuffle=False, num_epochs=1).take(200).as_numpy_iterator())
  expected = {k: sum(len(ex[k]) > lengths[k] for ex in full) for k in ("inputs", "targets")}
  stats = StreamStats()
  trimmed = t.get_dataset(lengths, split="train", shuffle=False, num_epochs=1).take(200)
  for ex in stats.counted(trimmed, lambda e: _counts(e, lengths=lengths, is_chat=False)).as_numpy_iterator():
    assert len(ex["inputs"]) <= lengths["inputs"] and len(ex["targets"]) <= lengths["targets"]
  counts = stats.as_dict()
  assert counts["examples"] == 200
  assert counts["inputs_truncated"] == expected["inputs"] > 0
  assert counts["targets_truncated"] == expected["targets"]
  assert "inputs_truncated=" in stats.summary()


def test_source_skips_reach_the_stream_summary_and_the_quality_scan():
  """A task whose source filter drops rows: the scan counts them per task, the stream summary names them."""
  from itjax.data.skips import SkipCounts, counted_filter
  from itjax.data.stream_stats import StreamStats

  def gen(r: random.Random):
    return {"x": str(r.randrange(10)), "answer": "a"}

  counts = SkipCounts("skipper")

  def drop_odd(ds):
    return counted_filter(ds, lambda ex: tf.strings.to_number(ex["x"], tf.int32) % 2 == 0, counts=counts,
                          reason="odd x")

  name = register_instruction_task("skipper", "q", procedural_source(gen, ("x",), {"train": 40, "validation": 4},
                                                                     seed=3),
                                   [T("Echo {x}")], fields=("x",), has_options=False, preprocessors=(drop_odd,),
                                   skips=counts)[0]
  task = seqio.get_mixture_or_task(name)
  try:
    raw = list(procedural_source(gen, ("x",), {"train": 40}, seed=3).get_dataset("train").as_numpy_iterator())
    odd = sum(int(ex["x"]) % 2 for ex in raw)
    report = q.scan(name, [name])
    assert report["tasks"][name]["skipped"] == odd > 0 and report["tasks"][name]["examples"] == 40 - odd
    assert "skipper" in StreamStats([task]).as_dict()["source_skipped"]
    summary = StreamStats([task]).summary()  # cumulative over this process's reads (the scan's eval split too)
    n = StreamStats([task]).as_dict()["source_skipped"]["skipper"]["odd x"]
    assert "skipped at the source: " in summary and f"skipper {n:,} odd x" in summary and n >= odd
  finally:
    seqio.TaskRegistry.remove(name)


def test_skip_counters_belong_to_their_datasets_not_the_module():
  """Two datasets' counters are independent objects, aggregated only over the tasks asked about."""
  from itjax.data import skips
  from itjax.data.pipeline import train_examples
  from itjax.data.stream_stats import StreamStats

  def gen(r: random.Random):
    return {"x": str(r.randrange(10)), "answer": "a"}

  names, counters = [], {}
  for dataset, reason in (("skip_a", "odd"), ("skip_b", "even")):
    counts = counters[dataset] = skips.SkipCounts(dataset)
    parity = 1 if reason == "odd" else 0

    def drop(ds, counts=counts, reason=reason, parity=parity):
      return skips.counted_filter(ds, lambda ex: tf.strings.to_number(ex["x"], tf.int32) % 2 != parity,
                                  counts=counts, reason=reason)

    names += register_instruction_task(dataset, "q", procedural_source(gen, ("x",), {"train": 30}, seed=5),
                                       [T("Echo {x}")], fields=("x",), has_options=False, preprocessors=(drop,),
                                       skips=counts)
  try:
    a, b = (seqio.get_mixture_or_task(n) for n in names)
    assert a.skips is counters["skip_a"] and b.skips is counters["skip_b"] and a.skips is not b.skips
    raw = [int(ex["x"]) for ex in procedural_source(gen, ("x",), {"train": 30}, seed=5).get_dataset("train")
           .as_numpy_iterator()]
    odd = sum(x % 2 for x in raw)
    assert len(list(a.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())) == 30 - odd
    assert skips.skip_counts([a]) == {"skip_a": {"odd": odd}} and skips.skip_counts([b]) == {}
    assert len(list(b.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())) == odd
    assert skips.skip_counts([a, b, a]) == {"skip_a": {"odd": odd}, "skip_b": {"even": 30 - odd}}
    # The stream reports the skips of the tasks it streams.
    stats = StreamStats()
    train_examples(names[1], {"inputs": 16, "targets": 4}, seed=0, stats=stats)
    assert stats.tasks == [b] and stats.as_dict()["source_skipped"] == {"skip_b": {"even": 30 - odd}}
    # No counters at module level: nothing in the module is a container of state.
    state = {k: v for k, v in vars(skips).items() if not k.startswith("__") and isinstance(v, dict | set | list)}
    assert not state, state
  finally:
    for n in names:
      seqio.TaskRegistry.remove(n)


def test_contamination_reads_training_once_for_several_eval_sets(monkeypatch):
  """One pass over the training tasks, one index per eval set; per set and per training task counts equal `scan`'s."""
  train_a = _register("quality_multi_a", ["alpha", "beta", "gamma"], {"train": 30, "validation": 1})
  train_b = _register("quality_multi_b", ["gamma", "delta"], {"train": 20, "validation": 1})
  seqio.MixtureRegistry.add("quality_multi_train", [train_a, train_b], default_rate=1.0)
  evals = {"b": [_register("quality_multi_eb", ["beta"], {"train": 1, "validation": 2})],
           "g": [_register("quality_multi_eg", ["gamma"], {"train": 1, "validation": 2})]}
  reads, indexes = [], []
  read, index = q._train_examples, q.eval_index
  monkeypatch.setattr(q, "_train_examples", lambda task, m: reads.append(task.name) or read(task, m))
  monkeypatch.setattr(q, "eval_index", lambda *a, **k: indexes.append(a[0]) or index(*a, **k))
  lines = []
  try:
    res = q.contamination("quality_multi_train", evals, max_per_task=25, progress=lines.append)
  finally:
    seqio.MixtureRegistry.remove("quality_multi_train")
  assert sorted(reads) == [train_a, train_b] and indexes == [evals["b"], evals["g"]]
  assert res["tasks"] == {train_a: 25, train_b: 20} and res["examples"] == 45
  monkeypatch.setattr(q, "_train_examples", read)
  monkeypatch.setattr(q, "eval_index", index)
  for set_name, names in evals.items():
    expected = {t: q.scan(t, names, max_per_task=25)["tasks"][t]["contaminated"] for t in (train_a, train_b)}
    assert res["sets"][set_name]["contaminated"] == sum(expected.values())
    assert res["sets"][set_name]["tasks"] == {t: c for t, c in expected.items() if c}
  assert set(res["sets"]["b"]["tasks"]) == {train_a}  # only task a has "beta"
  assert set(res["sets"]["g"]["tasks"]) == {train_a, train_b} and res["sets"]["g"]["contaminated"] > 0
  assert any("indexed" in line for line in lines) and "scanned" in lines[-1]
