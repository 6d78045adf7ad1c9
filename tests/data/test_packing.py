"""Best-fit packing: every example once, seqio's packed layout, determinism, resume, and unchanged non-chat features."""

import copy
import random
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from itjax.data import packing
from itjax.data.feature_converters import EncDecConverter, PrefixLMConverter
from itjax.data.pipeline import MIN_SHUFFLE_BUFFER, shuffle_buffer, train_dataset, train_examples
from itjax.data.sources import procedural_source
from itjax.data.stream_stats import StreamStats
from itjax.data.tasks import register_instruction_task
from itjax.data.templates import Template as T
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.families import interface_for

LENGTHS = {"inputs": 48, "targets": 16}


def _words(r: random.Random, n: int) -> str:
  return " ".join(r.choice(["ab", "cde", "f", "ghij", "kl"]) for _ in range(n))


SHUFFLE = 48  # within one epoch (60) and the budget: the stream keeps the task's own buffer, as seqio does


@pytest.fixture(scope="module")
def tasks():
  """Two small procedural tasks with varied lengths and a mixture of them; unregistered afterwards."""
  names = []
  for i, (lo, hi) in enumerate([(1, 4), (2, 7)]):
    def gen(r: random.Random, lo=lo, hi=hi):
      return {"x": _words(r, r.randint(lo, hi)), "answer": _words(r, r.randint(1, 2))}

    names += register_instruction_task(f"packing_t{i}", "q", procedural_source(gen, ("x",), {"train": 60}, seed=i),
                                       [T("Say {x}")], fields=("x",), has_options=False,
                                       shuffle_buffer_size=SHUFFLE)
  seqio.MixtureRegistry.add("packing_mix", [(names[0], 1.0), (names[1], 2.0)])
  yield names
  seqio.MixtureRegistry.remove("packing_mix")
  for n in names:
    seqio.TaskRegistry.remove(n)


def _finite(name, lengths=LENGTHS):
  return seqio.get_mixture_or_task(name).get_dataset(lengths, split="train", shuffle=False, num_epochs=1)


def _check_layout(values, segments, positions):
  """seqio's layout: segments 1..n in order, positions 0..len-1 in each, zeros (and only zeros) after."""
  for v, s, p in zip(values, segments, positions, strict=True):
    real = int(np.sum(s > 0))
    assert np.all(s[real:] == 0) and np.all(p[real:] == 0) and np.all(v[real:] == 0)
    ids = s[:real]
    assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)
    for i in set(ids.tolist()):
      np.testing.assert_array_equal(p[:real][ids == i], np.arange(np.sum(ids == i)))


# --- the packer -------------------------------------------------------------------------------------------------------
def _synthetic(sizes: np.ndarray, keys) -> tf.data.Dataset:
  """Example i: each feature k holds sizes[i, k] tokens, all equal to i + 1."""
  table = tf.constant(sizes, tf.int32)
  return tf.data.Dataset.range(len(sizes)).map(
      lambda i: {k: tf.fill([table[i, f]], tf.cast(i, tf.int32) + 1) for f, k in enumerate(keys)})


@pytest.mark.parametrize("lengths", [{"t": 128}, {"inputs": 96, "targets": 32}])
def test_packer_places_every_example_once_within_capacity(lengths):
  rng = np.random.default_rng(0)
  keys = list(lengths)
  n = 3000
  sizes = np.stack([np.minimum(rng.integers(1, lengths[k] + 1, n) // (2 if f else 1) + 1, lengths[k])
                    for f, k in enumerate(keys)], 1)
  stats = packing.PackingStats()
  ds = packing.pack_dataset(_synthetic(sizes, keys), lengths, window=256, max_open=16, stats=stats)
  rows = list(ds.as_numpy_iterator())
  again = list(ds.as_numpy_iterator())  # a second iterator packs on its own: the same rows
  out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  for k in out:
    np.testing.assert_array_equal(out[k], np.stack([r[k] for r in again]))
  for f, k in enumerate(keys):
    _check_layout(out[k], out[k + "_segment_ids"], out[k + "_positions"])
    seen = Counter(out[k][out[k] > 0].tolist())
    assert seen == Counter({i + 1: int(sizes[i, f]) for i in range(n)})  # each example whole, exactly once
  if len(keys) == 2:  # joint packing: an example has the same segment id in every feature
    for v0, s0, v1, s1 in zip(out[keys[0]], out[keys[0] + "_segment_ids"], out[keys[1]], out[keys[1] + "_segment_ids"],
                              strict=True):
      assert dict(zip(v0[s0 > 0].tolist(), s0[s0 > 0].tolist(), strict=True)) == dict(
          zip(v1[s1 > 0].tolist(), s1[s1 > 0].tolist(), strict=True))
  assert stats.examples == 2 * n and stats.tokens == 2 * int(sizes.sum())  # two iterations counted


def test_best_fit_beats_95_percent_on_long_tailed_lengths_and_carries_boundedly():
  """Lengths like the offline default's (15..105 tokens in rows of 128, median ~60) pack above 95%."""
  rng = np.random.default_rng(1)
  lengths = np.clip(rng.normal(62, 28, 8192).astype(int), 15, 105)
  cap = np.array([128])
  carried, ages, tokens, rows = np.zeros((0, 1), int), np.zeros(0, int), 0, 0
  for s in range(0, len(lengths), 512):
    sizes = np.concatenate([carried, lengths[s:s + 512, None]])
    age = np.concatenate([ages + 1, np.zeros(512, int)])
    emit, carry = packing.best_fit(sizes, age, cap, max_open=64, max_age=8)
    assert len(carry) <= 64 * 4 and age[carry].max(initial=0) < 7  # at most 64 rows carried, none too long
    tokens, rows = tokens + sum(int(sizes[m].sum()) for m in emit), rows + len(emit)
    carried, ages = sizes[carry], age[carry]
  assert tokens / (rows * 128) > 0.95


# --- converters: non-chat streams are seqio's, token for token --------------------------------------------------------
@pytest.mark.parametrize("pack", [False, True])
def test_prefix_lm_features_equal_seqio_converter(tasks, pack):
  ours = PrefixLMConverter(pack=pack, packer="seqio")(_finite(tasks[1]), LENGTHS)
  theirs = seqio.PrefixLMFeatureConverter(pack=pack)(_finite(tasks[1]), LENGTHS)
  a, b = list(ours.as_numpy_iterator()), list(theirs.as_numpy_iterator())
  assert len(a) == len(b) > 10
  for x, y in zip(a, b, strict=True):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _inputs_with_eos(ds):
  """The examples as a seqio task with EOS-terminated inputs (T5's `Feature(add_eos=True)`) gives them."""
  return ds.map(lambda ex: {**ex, "inputs": tf.concat([ex["inputs"], [1]], 0)})


def test_enc_dec_features_equal_seqio_converter(tasks):
  """Ours append EOS to the inputs; otherwise seqio's EncDec features, token for token."""
  for pack in (False, True):
    a = list(EncDecConverter(pack=pack, packer="seqio")(_finite(tasks[0]), LENGTHS).as_numpy_iterator())
    b = list(seqio.EncDecFeatureConverter(pack=pack)(_inputs_with_eos(_finite(tasks[0])), LENGTHS)
             .as_numpy_iterator())
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
      for k in y:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


DEC = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights", "decoder_positions")


def test_best_fit_rows_hold_exactly_seqios_examples(tasks):
  """Best fit changes which examples share a row, never an example's features."""
  unpacked = [{k: r[k][r["decoder_target_tokens"] > 0].tolist() for k in DEC[:3]}
              for r in seqio.PrefixLMFeatureConverter(pack=False)(_finite(tasks[1]), LENGTHS).as_numpy_iterator()]
  rows = list(PrefixLMConverter(pack=True)(_finite(tasks[1]), LENGTHS).as_numpy_iterator())
  _check_layout([r["decoder_target_tokens"] for r in rows], [r["decoder_segment_ids"] for r in rows],
                [r["decoder_positions"] for r in rows])
  packed = []
  for r in rows:
    seg = r["decoder_segment_ids"]
    for s in sorted(set(seg[seg > 0].tolist())):
      ex = {k: r[k][seg == s].tolist() for k in DEC[:3]}
      assert ex["decoder_input_tokens"][0] == 0  # BOS at every segment start: no leakage across examples
      packed.append(ex)
  key = lambda e: str(e)  # noqa: E731
  assert sorted(map(key, packed)) == sorted(map(key, unpacked))
  assert len(rows) < len(unpacked) / 2


def test_enc_dec_best_fit_packs_inputs_and_targets_jointly(tasks):
  rows = list(EncDecConverter(pack=True)(_finite(tasks[0]), LENGTHS).as_numpy_iterator())
  alone = {(tuple(r["encoder_input_tokens"][r["encoder_input_tokens"] > 0]),
            tuple(r["decoder_target_tokens"][r["decoder_target_tokens"] > 0]))
           for r in seqio.EncDecFeatureConverter(pack=False)(_inputs_with_eos(_finite(tasks[0])), LENGTHS)
           .as_numpy_iterator()}
  found = []
  for r in rows:
    es, ds_ = r["encoder_segment_ids"], r["decoder_segment_ids"]
    assert set(es[es > 0].tolist()) == set(ds_[ds_ > 0].tolist())
    for s in set(ds_[ds_ > 0].tolist()):
      found.append((tuple(r["encoder_input_tokens"][es == s]), tuple(r["decoder_target_tokens"][ds_ == s])))
      np.testing.assert_array_equal(r["encoder_positions"][es == s], np.arange(np.sum(es == s)))
  assert len(found) == 60 and set(found) == alone


# --- the training stream ----------------------------------------------------------------------------------------------
def test_mixture_examples_equal_seqio_mixture(tasks):
  """train_examples samples a mixture exactly as seqio.Mixture.get_dataset does."""
  ours = train_examples("packing_mix", LENGTHS, seed=3, shard_index=1, num_shards=2)
  theirs = seqio.get_mixture_or_task("packing_mix").get_dataset(
      LENGTHS, split="train", shuffle=True, num_epochs=None, seed=3, shard_info=seqio.ShardInfo(1, 2))
  for x, y in zip(ours.take(150).as_numpy_iterator(), theirs.take(150).as_numpy_iterator(), strict=True):
    assert set(x) == set(y) == {"inputs", "targets"}
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
    np.testing.assert_array_equal(x["targets"], y["targets"])


def test_shuffle_buffers_are_capped_by_epoch_and_budget(tasks):
  """Each task's buffer is its own, at most one epoch and at most its share of the budget."""
  task = seqio.get_mixture_or_task(tasks[0])
  assert shuffle_buffer(task, 2) == SHUFFLE
  big = copy.copy(task)
  big._shuffle_buffer_size = 10_000
  assert shuffle_buffer(big, 2) == 60  # one epoch
  assert shuffle_buffer(task, 1000, budget=20_000) == 20  # its share of the budget
  assert shuffle_buffer(task, 10**6, budget=20_000) == MIN_SHUFFLE_BUFFER


def test_unpacked_and_seqio_packed_batches_are_unchanged(tasks):
  """pack=False and packer="seqio" give the batches the plain seqio path gave before best fit."""
  for pack in (False, True):
    ds = train_dataset("packing_mix", LENGTHS, 4, seed=5, pack=pack, packer="seqio")
    plain = seqio.PrefixLMFeatureConverter(pack=pack)(seqio.get_mixture_or_task("packing_mix").get_dataset(
        LENGTHS, split="train", shuffle=True, num_epochs=None, seed=5, shard_info=seqio.ShardInfo(0, 1)), LENGTHS)
    plain = plain.batch(4, drop_remainder=True)
    for x, y in zip(ds.take(5).as_numpy_iterator(), plain.take(5).as_numpy_iterator(), strict=True):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_best_fit_stream_is_deterministic_resumable_and_efficient(tasks):
  stats = StreamStats()
  full = list(train_dataset("packing_mix", LENGTHS, 4, seed=1, stats=stats).take(12).as_numpy_iterator())
  resumed = list(train_dataset("packing_mix", LENGTHS, 4, seed=1, start_batch=7).take(5).as_numpy_iterator())
  for x, y in zip(full[7:], resumed, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  other_shard = next(train_dataset("packing_mix", LENGTHS, 4, seed=1, shard_index=1, num_shards=2).as_numpy_iterator())
  assert not np.array_equal(other_shard["decoder_target_tokens"], full[0]["decoder_target_tokens"])
  real = sum(int(np.sum(b["decoder_target_tokens"] > 0)) for b in full)
  seqio_real = sum(int(np.sum(b["decoder_target_tokens"] > 0)) for b in train_dataset(
      "packing_mix", LENGTHS, 4, seed=1, packer="seqio").take(12).as_numpy_iterator())
  assert real > seqio_real and real / (12 * 4 * 64) > 0.9
  assert stats.packing.rows > 0 and stats.packing.efficiency > 0.9


def test_packed_decoder_logits_equal_each_example_alone(tasks):
  """The decoder's packing masks work on best-fit rows: each segment gets the logits it gets alone."""
  cfg = DecoderConfig(vocab_size=259, emb_dim=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
  model = Decoder(cfg)
  iface = interface_for(model)
  batch = next(train_dataset(tasks[1], LENGTHS, 2, seed=0).as_numpy_iterator())
  params = model.init(jax.random.key(0), jnp.zeros((1, 64), jnp.int32))["params"]
  packed = np.asarray(iface.logits(params, {k: jnp.asarray(v) for k, v in batch.items()}))
  logits = jax.jit(lambda b: iface.logits(params, b))  # one shape: each example alone, padded to the row
  checked = 0
  for row in range(2):
    seg = batch["decoder_segment_ids"][row]
    for s in set(seg[seg > 0].tolist()):
      n = int((seg == s).sum())
      alone = logits({k: jnp.asarray(np.pad(batch[k][row][seg == s], (0, seg.size - n)))[None]
                      for k in ("decoder_input_tokens", "decoder_target_tokens")})
      np.testing.assert_allclose(packed[row][seg == s], np.asarray(alone)[0, :n], atol=1e-5)
      checked += 1
  assert checked >= 4


def test_pack_dataset_rejects_missing_and_2d_features():
  ds = tf.data.Dataset.from_tensors({"a": tf.ones([3], tf.int32), "b": tf.ones([2, 2], tf.int32)})
  with pytest.raises(ValueError, match="'c'"):
    packing.pack_dataset(ds, {"c": 4})
  with pytest.raises(ValueError, match="one-dimensional"):
    packing.pack_dataset(ds, {"b": 4})
