"""DPO (sigmoid, IPO, hinge), SimPO and ORPO against TRL (1.13-1.16) on the same tiny `transformers` Llama and pairs.

DPO: TRL's own `DPOTrainer._compute_loss` runs on the HF model (policy) and a second HF model (reference); itjax
runs the same weights, imported, on a packed preference batch (two pairs in one row, one in the next). Loss,
rewards, margins, log-probs and every parameter gradient agree within 1e-5. SimPO and ORPO: TRL's `cpo_loss` /
`odds_ratio_loss` on the log-probs, with their gradients, against itjax's.
"""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
accelerate = pytest.importorskip("accelerate")

from trl.experimental.cpo.cpo_trainer import CPOTrainer  # noqa: E402
from trl.experimental.orpo.orpo_trainer import ORPOTrainer  # noqa: E402
from trl.trainer import dpo_trainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

from itjax.models import hf_decoder  # noqa: E402
from itjax.models.families import interface_for  # noqa: E402
from itjax.train.objectives import preference  # noqa: E402
from itjax.train.objectives.preference import Preference  # noqa: E402

VOCAB = 50
# (prompt, chosen, rejected) token ids
PAIRS = [([3, 7, 9], [11, 12, 2], [13, 2]), ([4, 5], [20, 21, 22, 2], [23, 24, 25, 26, 2]),
         ([6, 8, 10, 14], [30, 2], [31, 32, 2])]


def _hf_model(seed):
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  model = transformers.LlamaForCausalLM(cfg).float()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model


def _itjax(model):
  cfg = hf_decoder.config_from_hf(model.config.to_dict())
  params = hf_decoder.params_from_hf(cfg, {k: v.detach().numpy() for k, v in model.state_dict().items()})
  return cfg, jax.tree.map(jnp.asarray, params)


def _trl_inputs():
  """TRL's batch: [chosen rows; rejected rows], right-padded, completion_mask on the responses."""
  seqs = [p + c for p, c, _ in PAIRS] + [p + r for p, _, r in PAIRS]
  masks = [[0] * len(p) + [1] * len(c) for p, c, _ in PAIRS] + [[0] * len(p) + [1] * len(r) for p, _, r in PAIRS]
  width = max(map(len, seqs))
  ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
  return {"input_ids": ids, "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
          "completion_mask": torch.tensor([m + [0] * (width - len(m)) for m in masks])}


def _itjax_batch():
  """The same pairs packed as the preference converter lays them out: pairs 0 and 1 in row 0, pair 2 in row 1."""
  rows = [[0, 1], [2]]
  length = 32
  feats = {k: np.zeros((2, length), np.int32) for k in ("decoder_input_tokens", "decoder_target_tokens",
                                                         "decoder_loss_weights", "decoder_segment_ids",
                                                         "decoder_positions", "preference_ids")}
  for r, pair_ids in enumerate(rows):
    at, segment = 0, 1
    for k, i in enumerate(pair_ids):
      prompt, chosen, rejected = PAIRS[i]
      for side, response in ((1, chosen), (2, rejected)):
        seq = prompt + response
        n = len(seq) - 1  # inputs seq[:-1] predict seq[1:]
        span = slice(at, at + n)
        feats["decoder_input_tokens"][r, span] = seq[:-1]
        feats["decoder_target_tokens"][r, span] = seq[1:]
        feats["decoder_loss_weights"][r, span] = [0] * (len(prompt) - 1) + [1] * len(response)
        feats["decoder_segment_ids"][r, span] = segment
        feats["decoder_positions"][r, span] = np.arange(n)
        feats["preference_ids"][r, span] = 2 * k + side
        at, segment = at + n, segment + 1
  return {k: jnp.asarray(v) for k, v in feats.items()}


def _trl_dpo(policy, reference, loss_type, beta):
  trainer = object.__new__(DPOTrainer)
  trainer.__dict__.update(
      model=policy, ref_model=reference, accelerator=accelerate.Accelerator(cpu=True), beta=beta,
      loss_types=[loss_type], loss_weights=[1.0], f_divergence_type="reverse_kl", ld_alpha=None,
      precompute_ref_logps=False, aux_loss_enabled=False, use_weighting=False, label_smoothing=0.0,
      _metrics={"train": collections.defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
      args=types.SimpleNamespace(gradient_checkpointing_kwargs=None))
  # TRL >= 1.16 patches both models in __init__ (skipped here) so `fused_lm_head=True` returns log-probs.
  if hasattr(dpo_trainer, "add_fused_lm_head"):
    dpo_trainer.add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    dpo_trainer.add_fused_lm_head(reference)
  policy.train()
  loss = trainer._compute_loss(policy, _trl_inputs(), return_outputs=False)
  loss.backward()
  return loss, trainer._metrics["train"]


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("ipo", 0.5), ("hinge", 0.3)])
def test_dpo_loss_rewards_and_gradients_equal_trl(loss_type, beta):
  policy, reference = _hf_model(0), _hf_model(1)
  for p in reference.parameters():
    p.requires_grad_(False)
  trl_loss, metrics = _trl_dpo(policy, reference, loss_type, beta)

  cfg, params = _itjax(policy)
  _, ref_params = _itjax(reference)
  objective = Preference(method="dpo", loss_type=loss_type, beta=beta)
  iface, batch = interface_for(cfg), _itjax_batch()

  def loss(p):
    sums = objective.loss_sums(iface, p, batch, {"reference": ref_params}, None)
    return sums["loss"] / objective.normalizer(sums, (2, 32)), sums

  (ours, sums), grads = jax.value_and_grad(loss, has_aux=True)(params)
  got = objective.metrics(sums, objective.normalizer(sums, (2, 32)))
  assert float(sums["pairs"]) == 3
  np.testing.assert_allclose(float(ours), trl_loss.item(), rtol=1e-5, atol=1e-6)
  for ours_key, trl_key in (("chosen_reward", "rewards/chosen"), ("rejected_reward", "rewards/rejected"),
                            ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies"),
                            ("chosen_logps", "logps/chosen"), ("rejected_logps", "logps/rejected")):
    np.testing.assert_allclose(float(got[ours_key]), metrics[trl_key][-1], rtol=1e-5, atol=1e-6, err_msg=ours_key)
  hf_grads = hf_decoder.params_to_hf(cfg, jax.tree.map(np.asarray, grads))
  for name, param in policy.named_parameters():
    np.testing.assert_allclose(hf_grads[name], param.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
  assert max(float(np.abs(g).max()) for g in hf_grads.values()) > 1e-3  # gradients are not trivially zero


def _stats(chosen, rejected, n_chosen, n_rejected):
  return preference.PairStats(chosen, rejected, n_chosen, n_rejected, jnp.ones_like(chosen, bool))


LOGPS = dict(chosen=np.array([-4.0, -9.5, -2.2]), rejected=np.array([-6.1, -7.0, -5.5]),
             n_chosen=np.array([3.0, 4.0, 2.0]), n_rejected=np.array([2.0, 5.0, 3.0]))


def _torch_and_grads(fn):
  c = torch.tensor(LOGPS["chosen"] / LOGPS["n_chosen"], requires_grad=True)
  r = torch.tensor(LOGPS["rejected"] / LOGPS["n_rejected"], requires_grad=True)
  losses, chosen_rewards, rejected_rewards = fn(c, r)[:3]
  losses.mean().backward()
  return losses.detach().numpy(), chosen_rewards.numpy(), rejected_rewards.numpy(), c.grad.numpy(), r.grad.numpy()


def _ours_and_grads(fn):
  def mean_loss(c, r):
    losses, cr, rr = fn(_stats(c * LOGPS["n_chosen"], r * LOGPS["n_rejected"], jnp.asarray(LOGPS["n_chosen"]),
                               jnp.asarray(LOGPS["n_rejected"])))
    return jnp.mean(losses), (losses, cr, rr)

  c, r = (jnp.asarray(LOGPS[k] / LOGPS["n_" + k]) for k in ("chosen", "rejected"))
  (_, (losses, cr, rr)), (gc, gr) = jax.value_and_grad(mean_loss, argnums=(0, 1), has_aux=True)(c, r)
  return losses, cr, rr, gc, gr


def test_simpo_equals_trl_cpo_simpo():
  trainer = object.__new__(CPOTrainer)
  trainer.__dict__.update(alpha=0.0, beta=2.0, simpo_gamma=0.5, label_smoothing=0.0, loss_type="simpo",
                          accelerator=accelerate.Accelerator(cpu=True))
  want = _torch_and_grads(trainer.cpo_loss)
  got = _ours_and_grads(lambda s: preference.simpo_losses(s, beta=2.0, gamma=0.5))
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6, atol=1e-7)


def test_orpo_odds_ratio_equals_trl():
  trainer = object.__new__(ORPOTrainer)
  trainer.__dict__.update(beta=0.1, accelerator=accelerate.Accelerator(cpu=True))

  def trl_fn(c, r):  # TRL adds beta * log sigmoid(log odds) to the loss (it subtracts their mean): negate
    losses, cr, rr, _, _ = trainer.odds_ratio_loss(c, r)
    return -losses, cr, rr

  def ours(s):
    ratio, _ = preference.orpo_odds(s)
    return -0.1 * ratio, 0.1 * s.chosen_mean, 0.1 * s.rejected_mean

  for g, w in zip(_ours_and_grads(ours), _torch_and_grads(trl_fn), strict=True):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6, atol=1e-7)
