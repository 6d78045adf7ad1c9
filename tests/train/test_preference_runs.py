"""Preference tuning and RL through `itjax train` on the procedural preference data (data -> rows -> objective
step -> held-out validation), from a short SFT start: DPO raises the held-out preference accuracy and margin,
the reward model (the SFT checkpoint with a fresh score head) the held-out pair accuracy, GRPO the held-out
reward (exact match, or the reward model's score) within a KL bound; the same runs with a zero learning rate
(the controls) stay where they started, so the checks bite."""

import json

import pytest
from train_runs import REPO, train

from itjax.cli import main
from itjax.train.summaries import read_metrics

TASK = ["--gin.MIXTURE_OR_TASK_NAME='proc_pref_echo'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}",
        "--gin.BATCH_SIZE=16", "--gin.DecoderConfig.num_layers=2"]
DPO = ["--gin.train.objective=@dpo()", "--gin.dpo.beta=0.1", "--gin.train.validation_split='validation'",
       "--gin.TRAIN_STEPS=40", "--gin.CHECKPOINT_PERIOD=40", "--gin.train.log_every=10"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
  d = tmp_path_factory.mktemp("pref_sft")
  assert train(d, *TASK, "--gin.TRAIN_STEPS=60", "--gin.CHECKPOINT_PERIOD=60", "--gin.LEARNING_RATE=3e-3",
               "--gin.train.log_every=20") == 0
  return d / "checkpoints" / "60"


def _validation(model_dir, step):
  m = read_metrics(str(model_dir))[step]
  return m["eval/validation/accuracy"], m["eval/validation/margin"], m["eval/validation/pairs"]


@pytest.mark.parametrize("lr, learns", [(1e-3, True), (0.0, False)])
def test_dpo_raises_held_out_preference_accuracy(tmp_path, sft, lr, learns):
  d = tmp_path / "dpo"
  assert train(d, *TASK, *DPO, f"--gin.INITIAL_CHECKPOINT_PATH='{sft}'", f"--gin.LEARNING_RATE={lr}") == 0
  acc0, margin0, pairs = _validation(d, 0)
  acc, margin, _ = _validation(d, 40)
  assert pairs == 64 and (acc0, margin0) == (0.0, 0.0)  # the policy starts as its reference
  train_metrics = read_metrics(str(d))[40]
  assert {"chosen_reward", "rejected_reward", "margin", "accuracy", "loss"} <= set(train_metrics)
  if learns:
    assert acc >= 0.75 and margin > 0.5, (acc, margin)
  else:
    assert acc == 0.0 and abs(margin) < 1e-6


def test_dpo_with_lora_uses_the_frozen_base_as_its_reference(tmp_path, sft):
  d = tmp_path / "dpo_lora"  # no reference copy: the base without the adapters is the reference
  assert train(d, *TASK, *DPO, f"--gin.INITIAL_CHECKPOINT_PATH='{sft}'", "--gin.train.peft=@lora()",
               "--gin.LEARNING_RATE=1e-2", "--gin.TRAIN_STEPS=20", "--gin.CHECKPOINT_PERIOD=20") == 0
  acc0, margin0, _ = _validation(d, 0)
  acc, margin, _ = _validation(d, 20)
  assert (acc0, margin0) == (0.0, 0.0) and acc >= 0.7 and margin > 0, (acc, margin)
  assert "PEFT (lora)" in (d / "model-info.txt").read_text()


RM = ["--gin.train.objective=@reward()", "--gin.DecoderConfig.score_head=True",
      "--gin.train.validation_split='validation'", "--gin.TRAIN_STEPS=60", "--gin.CHECKPOINT_PERIOD=60"]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, sft):
  d = tmp_path_factory.mktemp("rm")
  assert train(d, *TASK, *RM, f"--gin.INITIAL_CHECKPOINT_PATH='{sft}'", "--gin.LEARNING_RATE=2e-3") == 0
  return d


def test_reward_model_learns_to_rank_held_out_pairs(reward_model):
  acc0, _, pairs = _validation(reward_model, 0)
  acc, margin, _ = _validation(reward_model, 60)
  assert pairs == 64 and acc >= 0.85 and acc > acc0 + 0.2 and margin > 0, (acc0, acc, margin)


@pytest.mark.slow
def test_reward_model_control_stays(tmp_path, sft):
  d = tmp_path / "rm0"
  assert train(d, *TASK, *RM, f"--gin.INITIAL_CHECKPOINT_PATH='{sft}'", "--gin.LEARNING_RATE=0.0") == 0
  assert _validation(d, 60)[0] == _validation(d, 0)[0]


GRPO = ["--gin.train.objective=@grpo()", "--gin.stream_settings.pack=False", "--gin.grpo.group_size=8",
        "--gin.grpo.max_new_tokens=8", "--gin.BATCH_SIZE=16", "--gin.TRAIN_STEPS=40", "--gin.CHECKPOINT_PERIOD=40",
        "--gin.train.log_every=1", "--gin.train.validation_split='validation'"]


# The zero-LR controls of GRPO, PPO and the reward model run with the slow tests (DPO's runs here); GRPO's
# learning check here is against the reward model (below), exact-match rewards are PPO's.
@pytest.mark.slow
@pytest.mark.parametrize("lr, learns", [(1e-3, True), (0.0, False)])
def test_grpo_raises_the_mean_reward_within_a_kl_bound(tmp_path, sft, lr, learns):
  d = tmp_path / "grpo"
  assert train(d, *TASK, *GRPO, f"--gin.INITIAL_CHECKPOINT_PATH='{sft}'", f"--gin.LEARNING_RATE={lr}") == 0
  m = read_metrics(str(d))
  assert {"reward", "reward_std", "kl", "entropy", "clip_fraction", "completion_length"} <= set(m[40])
  # Held-out prompts, each sampled 8 times with one fixed key: the same policy always scores the same.
  before, after = m[0]["eval/validation/reward"], m[40]["eval/validation/reward"]
  kl = sum(m[s]["kl"] for s in range(1, 41)) / 40
  if learns:
    assert after > before + 0.1 and kl < 0.5 and m[40]["eval/validation/kl"] < 0.5, (before, after, kl)
  else:
    assert after == before and kl < 1e-6, (before, after, kl)


def test_grpo_against_the_reward_model_raises_its_held_out_reward(tmp_path, sft, reward_model):
  d = tmp_path / "grpo_rm"
  rm = reward_model / "checkpoints" / "60"
  assert train(d, *TASK, *GRPO, f"--gin.INITIAL_CHECKPOINT_PATH='{sft}'", "--gin.LEARNING_RATE=1e-3",
               "--gin.grpo.reward='model'", f"--gin.grpo.reward_model='{rm}'") == 0
  m = read_metrics(str(d))
  before, after = m[0]["eval/validation/reward"], m[40]["eval/validation/reward"]
  assert after > before + 0.5 and m[40]["eval/validation/kl"] < 0.5, (before, after)
  # The report: the tuned policy against its SFT start on the held-out prompts, by exact match and the reward model.
  out = tmp_path / "report"
  assert main(["rlhf-report", "--sft", str(sft), "--policy", str(d), "--reward_model", str(rm), "--task",
               "proc_pref_echo", "--inputs_length", "24", "--targets_length", "8", "--max_new_tokens", "8",
               "--output", str(out)]) == 0
  report = json.loads((out / "rlhf_report.json").read_text())
  assert report["prompts"] == 64 and (out / "rl_curves.png").stat().st_size > 0
  assert report["win_rate_reward_model"] > 0.5  # greedy completions of the tuned policy score higher
  assert report["reward_model_accuracy"]["end"] >= 0.85
  assert report["curves"]["step"] == list(range(1, 41))


PPO = ["--gin.train.objective=@ppo()", "--gin.DecoderConfig.value_head=True", "--gin.stream_settings.pack=False",
       "--gin.ppo.max_new_tokens=8", "--gin.BATCH_SIZE=64", "--gin.TRAIN_STEPS=40", "--gin.CHECKPOINT_PERIOD=40",
       "--gin.train.log_every=1", "--gin.train.validation_split='validation'"]


@pytest.mark.parametrize("lr, learns", [(1e-3, True), pytest.param(0.0, False, marks=pytest.mark.slow)])
def test_ppo_raises_the_mean_reward_and_fits_its_value_head(tmp_path, sft, lr, learns):
  d = tmp_path / "ppo"
  assert train(d, *TASK, *PPO, f"--gin.INITIAL_CHECKPOINT_PATH='{sft}'", f"--gin.LEARNING_RATE={lr}",
               "--gin.ppo.ptx_coef=0.1", "--gin.ppo.epochs=2") == 0
  m = read_metrics(str(d))
  assert {"reward", "kl", "value_loss", "entropy", "clip_fraction", "value_clip_fraction", "ptx_loss"} <= set(m[40])
  before, after = m[0]["eval/validation/reward"], m[40]["eval/validation/reward"]
  value_loss = [m[s]["value_loss"] for s in range(1, 41)]
  if learns:
    assert after > before + 0.1 and m[40]["eval/validation/kl"] < 2.0, (before, after)
    assert sum(value_loss[-10:]) < sum(value_loss[:10])  # the critic learns the returns
    assert max(m[s]["clip_fraction"] for s in range(1, 41)) > 0  # the second epoch's ratio moves: the clip acts
  else:
    assert after == before


def test_dpo_trains_an_encoder_decoder_on_preference_rows(tmp_path):
  """T5: the prompt (+ EOS) is the encoder's, once per side; SFT then DPO raise the held-out accuracy."""
  t5 = [f"--gin_file={REPO}/tests/tiny_t5.gin", "--gin.DROPOUT_RATE=0.0", *TASK[:-1]]
  sft_dir, d = tmp_path / "t5_sft", tmp_path / "t5_dpo"
  assert train(sft_dir, *t5, "--gin.TRAIN_STEPS=60", "--gin.CHECKPOINT_PERIOD=60", "--gin.LEARNING_RATE=3e-3") == 0
  assert train(d, *t5, *DPO, f"--gin.INITIAL_CHECKPOINT_PATH='{sft_dir / 'checkpoints' / '60'}'",
               "--gin.LEARNING_RATE=1e-3") == 0
  acc0, _, pairs = _validation(d, 0)
  acc, margin, _ = _validation(d, 40)
  assert pairs == 64 and acc0 == 0.0 and acc >= 0.75 and margin > 0, (acc, margin)


def test_an_encoder_decoder_reward_model_learns_to_rank(tmp_path):
  """T5 with a score head: the reward is the score at a response's last decoder position."""
  t5 = [f"--gin_file={REPO}/tests/tiny_t5.gin", "--gin.DROPOUT_RATE=0.0", *TASK[:-1]]
  d = tmp_path / "t5_rm"
  assert train(d, *t5, "--gin.train.objective=@reward()", "--gin.T5Config.score_head=True",
               "--gin.train.validation_split='validation'", "--gin.TRAIN_STEPS=80", "--gin.CHECKPOINT_PERIOD=80",
               "--gin.LEARNING_RATE=3e-3") == 0
  acc0, _, _ = _validation(d, 0)
  acc, margin, _ = _validation(d, 80)
  assert acc >= 0.75 and acc > acc0 + 0.2 and margin > 0, (acc0, acc, margin)  # from a random start


def test_a_python_reward_function_sees_each_prompt_completion_and_answer():
  import jax
  import jax.numpy as jnp

  from itjax.train.objectives import rollouts
  seen = []

  def fn(prompts, completions, answers):
    seen.append((prompts, completions, answers))
    return [float(c == a) for c, a in zip(completions, answers, strict=True)]

  # Two unpacked rows: BOS + prompt [5, 6] with answer [7, EOS]; BOS + prompt [8] with answer [9, 9, EOS].
  batch = {"decoder_input_tokens": jnp.asarray([[0, 5, 6, 7, 0, 0], [0, 8, 9, 9, 0, 0]]),
           "decoder_target_tokens": jnp.asarray([[5, 6, 7, 1, 0, 0], [8, 9, 9, 1, 0, 0]]),
           "decoder_loss_weights": jnp.asarray([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0]])}
  prompts, mask, answers = rollouts.left_aligned_prompts(batch)
  completions = jnp.asarray([[7, 1, 0], [9, 4, 1]])
  tokens = jnp.concatenate([prompts, completions], axis=1)
  seg = jnp.concatenate([mask, rollouts.completion_mask(completions, 1).astype(jnp.int32)], axis=1)
  rollout = {"decoder_input_tokens": tokens[:, :-1], "decoder_segment_ids": seg[:, :-1]}
  got = jax.jit(lambda r, c, a: rollouts.python_rewards(fn, r, c, a, 1))(rollout, completions, answers)
  assert list(map(float, got)) == [1.0, 0.0]
  assert seen[0] == ([[5, 6], [8]], [[7, 1], [9, 4, 1]], [[7, 1], [9, 9, 1]])
  assert rollouts.token_f1([[1]], [[9, 4, 1]], [[9, 9, 1]]) == [2 * 2 / 6]
