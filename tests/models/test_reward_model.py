"""Reward models: a decoder with a scalar score head exports to `transformers` as LlamaForSequenceClassification
with the same scores, loads back, and scores each sequence of a packed preference batch as it scores it alone."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itjax.data import preference as pref
from itjax.models.decoder import Decoder, DecoderConfig
from itjax.models.families import interface_for
from itjax.models.features import PREFERENCE_IDS, PREFIX_LM_LAYOUT
from itjax.models.hf_decoder import load_hf_dir, save_hf_dir
from itjax.train.objectives.reward import RewardModel, sequence_rewards

CFG = DecoderConfig(vocab_size=259, emb_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                    score_head=True)


def _params(cfg=CFG, seed=0):
  return nn.meta.unbox(Decoder(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"])


def test_score_head_replaces_the_lm_head():
  params = _params()
  assert "score" in params and "lm_head" not in params and params["score"].shape == (32, 1)


def test_exports_as_sequence_classification_with_the_same_scores(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  params = _params()
  save_hf_dir(CFG, params, tmp_path / "rm")
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
  assert type(hf).__name__ == "LlamaForSequenceClassification"
  rng = np.random.default_rng(0)
  seqs = [rng.integers(3, 259, size=n).tolist() for n in (5, 9, 13)]
  width = max(len(s) for s in seqs) + 1
  # The reward is the score at a sequence's last position: its inputs are [0] + the sequence, as the rows hold them.
  ids = np.zeros((len(seqs), width), np.int64)
  for i, s in enumerate(seqs):
    ids[i, 1:len(s) + 1] = s
  ours = np.asarray(Decoder(CFG).apply({"params": params}, jnp.asarray(ids)))[..., 0]
  want = [ours[i, len(s)] for i, s in enumerate(seqs)]
  with torch.no_grad():
    got = hf(input_ids=torch.from_numpy(ids)).logits[:, 0].numpy()  # pooled at the last non-pad token
  np.testing.assert_allclose(got, want, atol=1e-5)
  cfg, loaded = load_hf_dir(tmp_path / "rm")
  assert cfg.score_head
  np.testing.assert_array_equal(np.asarray(loaded["score"]), np.asarray(params["score"]))


def test_packed_rewards_equal_each_sequence_scored_alone():
  rows = [pref.PreferenceRow(f"Pick {i}:", (f"r{j}" * (j + 1) for j in range(4)), (2, 1, 4, 3)) for i in range(3)]
  rows = [dataclasses.replace(r, responses=tuple(r.responses)) for r in rows]
  pref.register_preference_task("test_rm_rank", pref.PreferenceSource(rows={"train": rows}, fmt="ranking"))
  lengths = {"inputs": 16, "targets": 16}
  params = _params(seed=1)
  iface = interface_for(CFG)
  score = jax.jit(lambda t: Decoder(CFG).apply({"params": params}, t))
  checked = 0
  for batch in pref.preference_dataset("test_rm_rank", lengths, 3, seed=None,
                                       layout=PREFIX_LM_LAYOUT).as_numpy_iterator():
    chosen, rejected, valid = sequence_rewards(iface, params, {k: jnp.asarray(v) for k, v in batch.items()})
    for r in range(len(batch[PREFERENCE_IDS])):
      ids = batch[PREFERENCE_IDS][r]
      for k in range(int(ids.max()) // 2):
        for side, got in ((2 * k + 1, chosen[r, k]), (2 * k + 2, rejected[r, k])):
          tokens = batch["decoder_input_tokens"][r][ids == side]
          alone = np.asarray(score(jnp.asarray(np.pad(tokens, (0, 32 - len(tokens))))[None]))[0, len(tokens) - 1, 0]
          assert float(got) == pytest.approx(float(alone), abs=1e-5)
          checked += 1
        assert valid[r, k]
  assert checked == 2 * 6 * 3  # every pair of every 4-way ranking
  sums = RewardModel().loss_sums(iface, params, {k: jnp.asarray(v) for k, v in batch.items()}, {}, None)
  diff = np.asarray(chosen - rejected)[np.asarray(valid)]
  np.testing.assert_allclose(float(sums["loss"]) / float(sums["pairs"]), np.mean(np.log1p(np.exp(-diff))), rtol=1e-5)


def test_reward_objective_on_a_language_model_is_a_clear_error():
  from itjax.errors import UserError
  cfg = dataclasses.replace(CFG, score_head=False)
  batch = {k: jnp.ones((1, 8), jnp.int32) for k in ("decoder_input_tokens", "decoder_target_tokens",
                                                     "decoder_loss_weights", "decoder_segment_ids",
                                                     "decoder_positions", PREFERENCE_IDS)}
  with pytest.raises(UserError, match="DecoderConfig.score_head = True"):
    RewardModel().loss_sums(interface_for(cfg), _params(cfg), batch, {}, None)
