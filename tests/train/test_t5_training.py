"""Encoder-decoder (T5) through the same trainer, eval and scoring path as the decoder."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from itjax.cli import main
from itjax.data.pipeline import numpy_batches, train_dataset
from itjax.data.stream_stats import StreamStats
from itjax.models.families import interface_for
from itjax.models.features import ENC_DEC, PREFIX_LM_LAYOUT, FeatureLayout
from itjax.models.t5 import T5, T5Config
from itjax.train.summaries import read_metrics

T5_LAYOUT = FeatureLayout(ENC_DEC, inputs_eos_id=1)  # a T5's features (EOS 1 ends the encoder inputs)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_T5 = os.path.join(REPO, "tests", "tiny_t5.gin")


def _train(model_dir, *extra):
  return main(["train", f"--gin_file={TINY_T5}", f"--model_dir={model_dir}", "--gin.checkpoint_settings.keep=None",
               *extra])


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("t5") / "run"
  assert _train(model_dir) == 0
  return model_dir


def test_t5_trains_checkpoints_and_evaluates(t5_run):
  blob = json.loads((t5_run / "model_config.json").read_text())
  assert blob["architecture"] == "t5" and blob["config"]["dropout_rate"] == 0.1
  metrics = read_metrics(str(t5_run))
  assert sorted(metrics) == list(range(1, 7))
  assert all(np.isfinite(m["loss"]) for m in metrics.values())
  assert sorted(os.listdir(t5_run / "checkpoints")) == ["3", "6"]
  report = json.loads((t5_run / "eval" / "heldout" / "report.json").read_text())
  overall = report["sets"]["held-out"]["overall"]
  assert set(overall["exact_match"]) == {"init", "step_6"}
  assert overall["rank_accuracy"]["step_6"] is not None  # NLI rows have options: rank-classified by the T5


@pytest.mark.slow
def test_t5_resume_matches_uninterrupted_run_with_dropout(t5_run, tmp_path):
  """Dropout keys come from (seed, step): steps 4-6 after a resume equal the uninterrupted run's."""
  part = tmp_path / "part"
  assert _train(part, "--gin.TRAIN_STEPS=3", "--gin.EVAL_MIXTURES=None") == 0
  assert _train(part, "--gin.EVAL_MIXTURES=None") == 0
  full, resumed = read_metrics(str(t5_run)), read_metrics(str(part))
  for step in (4, 5, 6):
    assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-6)


def test_t5_dropout_changes_the_loss(t5_run, tmp_path):
  no_drop = tmp_path / "nodrop"
  assert _train(no_drop, "--gin.DROPOUT_RATE=0.0", "--gin.TRAIN_STEPS=1", "--gin.EVAL_MIXTURES=None") == 0
  assert read_metrics(str(no_drop))[1]["loss"] != pytest.approx(read_metrics(str(t5_run))[1]["loss"], rel=1e-6)


def test_enc_dec_features_pack_inputs_and_targets_with_target_only_loss():
  ds = train_dataset("proc_add_zs_noopt", {"inputs": 48, "targets": 16}, 4, seed=0, layout=T5_LAYOUT)
  batch = next(numpy_batches(ds))
  assert set(batch) == {"encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_input_tokens",
                        "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids", "decoder_positions"}
  assert batch["encoder_input_tokens"].shape == (4, 48) and batch["decoder_target_tokens"].shape == (4, 16)
  # Loss on every real target token and nowhere else; decoder inputs are targets shifted right per segment.
  np.testing.assert_array_equal(batch["decoder_loss_weights"], batch["decoder_target_tokens"] > 0)
  for row in range(4):
    seg = batch["decoder_segment_ids"][row]
    for s in set(seg[seg > 0].tolist()):
      idx = np.nonzero(seg == s)[0]
      assert batch["decoder_input_tokens"][row, idx[0]] == 0
      np.testing.assert_array_equal(batch["decoder_input_tokens"][row, idx[1:]],
                                    batch["decoder_target_tokens"][row, idx[:-1]])
      assert set(batch["encoder_segment_ids"][row][batch["encoder_segment_ids"][row] > 0].tolist()) >= {s}
      # Every encoder segment ends with EOS (as T5 was pretrained); EOS nowhere else in the inputs.
      enc = batch["encoder_input_tokens"][row][batch["encoder_segment_ids"][row] == s]
      assert enc[-1] == 1 and 1 not in enc[:-1].tolist()


def test_enc_dec_inputs_keep_room_for_eos_and_count_that_truncation():
  """Tasks are read with inputs of length - 1, then EOS ends each: nothing but the EOS is added or lost."""
  import tensorflow as tf

  from itjax.data.feature_converters import EncDecConverter

  lengths = {"inputs": 12, "targets": 16}
  assert T5_LAYOUT.task_lengths(lengths) == {"inputs": 11, "targets": 16}
  assert PREFIX_LM_LAYOUT.task_lengths(lengths) == lengths
  examples = [list(range(3, 8)), list(range(3, 14))]  # 5 and 11 (= 12 - 1) tokens
  ds = tf.data.Dataset.from_generator(lambda: ({"inputs": x, "targets": [7, 1]} for x in examples),
                                      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                                                        "targets": tf.TensorSpec([None], tf.int32)})
  rows = list(EncDecConverter(pack=False)(ds, lengths).as_numpy_iterator())
  for x, row in zip(examples, rows, strict=True):
    enc = row["encoder_input_tokens"]
    assert enc[enc > 0].tolist() == x + [1]
  stats = StreamStats()
  batch = next(numpy_batches(train_dataset("proc_add_zs_noopt", lengths, 8, seed=0, layout=T5_LAYOUT,
                                           pack=False, stats=stats)))
  for enc in batch["encoder_input_tokens"]:
    assert enc[enc > 0][-1] == 1
  assert stats.as_dict()["inputs_truncated"] > 0  # counted against the 11 tokens the text may have


def test_a_vocabulary_with_another_eos_is_refused(tmp_path, capsys):
  assert _train(tmp_path / "eos", "--gin.T5Config.eos_id=2", "--gin.TRAIN_STEPS=1",
                "--gin.EVAL_MIXTURES=None") == 2
  assert "the vocabulary's EOS is id 1 but MODEL has eos_id=2" in capsys.readouterr().err


def test_packed_batch_loss_logits_equal_each_example_alone():
  """A packed EncDec batch gives each segment the logits it gets alone (no cross-segment attention)."""
  cfg = T5Config(vocab_size=259, emb_dim=32, mlp_dim=64, num_heads=2, head_dim=16, num_encoder_layers=1,
                 num_decoder_layers=1)
  model = T5(cfg)
  iface = interface_for(model)
  ds = train_dataset("proc_add_zs_noopt", {"inputs": 48, "targets": 16}, 2, seed=1, layout=T5_LAYOUT)
  batch = next(numpy_batches(ds))
  params = model.init(jax.random.key(0), jnp.zeros((1, 48), jnp.int32), jnp.zeros((1, 16), jnp.int32))["params"]
  packed = np.asarray(iface.logits(params, {k: jnp.asarray(v) for k, v in batch.items()}))
  # One shape: each example alone, padded to the row (segment id 0 on the padding).
  apply = jax.jit(lambda enc, dec: model.apply({"params": params}, enc, dec, (enc > 0).astype(jnp.int32),
                                               jnp.ones_like(dec)))
  checked = 0
  for row in range(2):
    eseg, dseg = batch["encoder_segment_ids"][row], batch["decoder_segment_ids"][row]
    for s in set(dseg[dseg > 0].tolist()):
      enc = batch["encoder_input_tokens"][row][eseg == s]
      dec = batch["decoder_input_tokens"][row][dseg == s]
      alone = np.asarray(apply(jnp.asarray(np.pad(enc, (0, 48 - len(enc))))[None],
                               jnp.asarray(np.pad(dec, (0, 16 - len(dec))))[None]))
      np.testing.assert_allclose(packed[row][dseg == s], alone[0, :len(dec)], atol=1e-5)
      checked += 1
  assert checked >= 3  # the batch really was packed


@pytest.mark.slow
def test_enc_dec_scores_equal_the_log_softmax_of_a_plain_forward():
  cfg = T5Config(vocab_size=259, emb_dim=32, mlp_dim=64, num_heads=2, head_dim=16, num_encoder_layers=1,
                 num_decoder_layers=1)
  model = T5(cfg)
  params = model.init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 4), jnp.int32))["params"]
  vocab = seqio.ByteVocabulary()
  pairs = [(list(vocab.encode("is 2 > 1?")), list(vocab.encode("yes")) + [1]),
           (list(vocab.encode("a much longer prompt here")), list(vocab.encode("no")) + [1]),
           (list(vocab.encode("x")), [1])]
  scores, greedy = interface_for(model).score(params, pairs, batch_size=2)
  for (p, c), s in zip(pairs, scores, strict=True):
    # The encoder reads the prompt and EOS, as T5 tokenizers and the training features give it.
    logits = model.apply({"params": params}, jnp.asarray([p + [cfg.eos_id]]), jnp.asarray([[0] + c[:-1]]))
    logp = jax.nn.log_softmax(logits[0], axis=-1)
    assert s == pytest.approx(float(sum(logp[i, t] for i, t in enumerate(c))), abs=1e-4)
  assert greedy.dtype == bool and greedy.shape == (3,)


@pytest.mark.slow
def test_enc_dec_generate_matches_step_by_step_argmax():
  cfg = T5Config(vocab_size=259, emb_dim=32, mlp_dim=64, num_heads=2, head_dim=16, num_encoder_layers=1,
                 num_decoder_layers=1)
  model = T5(cfg)
  params = model.init(jax.random.key(2), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 4), jnp.int32))["params"]
  prompts = [[10, 11, 12], [20, 21, 22, 23, 24, 25]]
  out = interface_for(model).generate(params, prompts, max_new_tokens=5, eos_id=-1)  # -1: never stops
  for p, row in zip(prompts, out, strict=True):
    dec = [0]
    for _ in range(5):
      logits = model.apply({"params": params}, jnp.asarray([p + [cfg.eos_id]]), jnp.asarray([dec]))
      dec.append(int(jnp.argmax(logits[0, -1])))
    assert row.tolist() == dec[1:]
