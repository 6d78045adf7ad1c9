"""lm-evaluation-harness backend: lm-eval tasks over local files run on a tiny trained itjax MODEL_DIR.

Checks the metrics lm-eval reports, and that the backend's numbers equal manual computations from the
Flax model: a continuation's log-likelihood, a document's rolling-window log-likelihood, greedy output.
"""

import functools
import json
import os
import subprocess
import sys

# Local files only: never let HF datasets / hub reach the network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from itjax.cli import main  # noqa: E402
from itjax.eval.lm_eval_backend import ItjaxLM  # noqa: E402
from itjax.models.decoding import greedy_decode, left_pad, strip_eos  # noqa: E402

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tiny.gin")

MC_DOCS = [
    {"question": "What color is the sky?", "choices": ["blue", "green", "red"], "label": 0},
    {"question": "How many legs has a cat?", "choices": ["two", "four"], "label": 1},
    {"question": "Is fire hot?", "choices": ["yes", "no"], "label": 0},
    {"question": "Which is a fruit?", "choices": ["stone", "apple", "chair", "cloud"], "label": 1},
]
GEN_PROMPTS = ["What is 1 + 2?", "Name a colour:"]
GEN_MAX_TOKS = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A freshly trained tiny MODEL_DIR (2 steps)."""
  d = tmp_path_factory.mktemp("lm_eval_model")
  assert main(["train", f"--gin_file={TINY}", f"--model_dir={d}", "--gin.TRAIN_STEPS=2",
               "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_MIXTURES=None"]) == 0
  return d


@pytest.fixture(scope="module")
def lm(model_dir):
  """The backend, loaded by name the way `--model itjax --model_args pretrained=MODEL_DIR` does."""
  return lm_eval.api.registry.get_model("itjax").create_from_arg_string(f"pretrained={model_dir}",
                                                                        {"batch_size": 8, "device": None})


@functools.partial(jax.jit, static_argnames="model")
def _forward_log_probs(model, params, tokens):
  return jax.nn.log_softmax(model.apply({"params": params}, tokens).astype(jnp.float32), axis=-1)


def _log_probs(lm, seq):
  """log p over the vocabulary at each position of `seq` (all tokens but the last are fed), by a plain forward.

  Right-padded to 64 so that one compilation serves every call: causal attention ignores later positions.
  """
  tokens = np.zeros((1, 64), np.int32)
  tokens[0, : len(seq) - 1] = seq[:-1]
  return np.asarray(_forward_log_probs(lm.model, lm.params, tokens))[0, : len(seq) - 1]


def _manual_greedy(lm, prompt, max_new):
  """Plain greedy decoding (stopping only at EOS): the prompt's row of a batch like the backend's."""
  tokens, mask = left_pad([[0] + lm.tok_encode(prompt)] + [[0]] * (lm.batch_size - 1))
  out = greedy_decode(lm.model, lm.params, tokens, mask, max_new_tokens=max_new, eos_id=lm.vocab.eos_id)
  return lm.tok_decode(strip_eos(np.asarray(out)[0], lm.vocab.eos_id))


def _task_dir(tmp_path, name, docs, config):
  data = tmp_path / f"{name}.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in docs))
  config = {"task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "hf_cache")},
            "test_split": "test", **config}
  (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
  return TaskManager(include_path=str(tmp_path), include_defaults=False)


def _evaluate(lm, tm, name):
  out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=tm, bootstrap_iters=0, log_samples=True)
  return out["results"][name], sorted(out["samples"][name], key=lambda s: s["doc_id"])


def test_multiple_choice_task(lm, tmp_path):
  tm = _task_dir(tmp_path, "itjax_toy_mc", MC_DOCS, {
      "output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
      "doc_to_choice": "choices", "doc_to_target": "label",
      "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]})
  results, samples = _evaluate(lm, tm, "itjax_toy_mc")
  for metric in ("acc,none", "acc_norm,none"):
    assert 0.0 <= results[metric] <= 1.0, results
  # acc is the share of documents whose gold choice has the highest log-likelihood.
  lls = [[r[0][0] for r in s["resps"]] for s in samples]
  picked = [np.argmax(ll) == d["label"] for ll, d in zip(lls, MC_DOCS, strict=True)]
  assert results["acc,none"] == pytest.approx(np.mean(picked))
  # One request, by hand: BOS + context + " " + choice through the Flax model.
  context, continuation = samples[3]["arguments"][1]
  assert context == "Question: Which is a fruit?\nAnswer:" and continuation == " apple"
  ctx, cont = lm.tok_encode(context), lm.tok_encode(continuation)
  logp = _log_probs(lm, [0] + ctx + cont)
  manual = sum(float(logp[len(ctx) + j, t]) for j, t in enumerate(cont))
  np.testing.assert_allclose(lls[3][1], manual, rtol=1e-5, atol=1e-5)
  greedy = all(int(np.argmax(logp[len(ctx) + j])) == t for j, t in enumerate(cont))
  assert samples[3]["resps"][1][0][1] == greedy


def test_generation_task(lm, tmp_path):
  # lm-eval's until cuts the text at the first newline.
  expected = [_manual_greedy(lm, p, GEN_MAX_TOKS).split("\n")[0] for p in GEN_PROMPTS]
  # The first answer is what the model says; the second one it cannot say (it stops at the newline).
  docs = [{"question": GEN_PROMPTS[0], "answer": expected[0]}, {"question": GEN_PROMPTS[1], "answer": "x\ny"}]
  tm = _task_dir(tmp_path, "itjax_toy_gen", docs, {
      "output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
      "generation_kwargs": {"until": ["\n"], "max_gen_toks": GEN_MAX_TOKS, "do_sample": False},
      "metric_list": [{"metric": "exact_match"}]})
  results, samples = _evaluate(lm, tm, "itjax_toy_gen")
  assert [s["resps"][0][0] for s in samples] == expected
  assert results["exact_match,none"] == pytest.approx(0.5)


def test_generate_until_max_gen_toks_and_stop_strings(lm):
  def generate(**kwargs):
    return lm.generate_until([Instance("generate_until", {}, (GEN_PROMPTS[0], kwargs), 0)])[0]

  full = generate(max_gen_toks=GEN_MAX_TOKS)
  assert full == _manual_greedy(lm, GEN_PROMPTS[0], GEN_MAX_TOKS)
  assert len(lm.tok_encode(generate(max_gen_toks=3))) <= 3
  if len(full) >= 3:  # a stop string cuts the text before its first occurrence
    stop = full[1:3]
    assert generate(max_gen_toks=GEN_MAX_TOKS, until=[stop]) == full[: full.index(stop)]


def test_loglikelihood_rolling_equals_manual_sum(lm):
  short, long = "A short document.", "The quick brown fox jumps over the lazy dog, twice: " * 2
  # Shorter than max_length: one window, BOS + the whole document.
  toks = lm.tok_encode(short)
  logp = _log_probs(lm, [0] + toks)
  manual_short = sum(float(logp[j, t]) for j, t in enumerate(toks))
  # max_length 16: windows of 15 predicted tokens, each row BOS + up to 15 tokens of context.
  small = ItjaxLM(model=lm.model, params=lm.params, mesh=lm.mesh, rules=lm.rules, max_length=16, batch_size=8)
  toks = lm.tok_encode(long)
  span, manual_long, prev = small.max_length - 1, 0.0, 0
  while prev < len(toks):
    end = min(prev + span, len(toks))
    row = [0] + toks[max(0, end - span - 1) if prev else 0: end]
    assert len(row) - 1 <= small.max_length
    logp = _log_probs(lm, row)
    manual_long += sum(float(logp[len(row) - 1 - k, row[len(row) - k]]) for k in range(end - prev, 0, -1))
    prev = end
  reqs = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate([short, long, ""])]
  got = lm.loglikelihood_rolling(reqs[:1] + reqs[2:])
  np.testing.assert_allclose(got, [manual_short, 0.0], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(small.loglikelihood_rolling(reqs[1:2]), [manual_long], rtol=1e-5)
  # Every token is predicted exactly once.
  assert sum(len(c) for _, c in small.rolling_windows(toks)) == len(toks)


def test_loglikelihood_empty_context_and_truncation(lm):
  text = "hello"
  toks = lm.tok_encode(text)
  logp = _log_probs(lm, [0] + toks)
  manual = sum(float(logp[j, t]) for j, t in enumerate(toks))
  small = ItjaxLM(model=lm.model, params=lm.params, mesh=lm.mesh, rules=lm.rules, max_length=8)
  long_ctx = "ignored prefix, then: ab"
  ctx = lm.tok_encode(long_ctx)[-(8 - 2):]  # room for 6 context tokens and the 2-token continuation
  logp_t = _log_probs(lm, [0] + ctx + lm.tok_encode("cd"))
  manual_t = float(logp_t[len(ctx), lm.tok_encode("c")[0]] + logp_t[len(ctx) + 1, lm.tok_encode("d")[0]])
  got = lm.loglikelihood([Instance("loglikelihood", {}, ("", text), 0)])
  np.testing.assert_allclose(got[0][0], manual, rtol=1e-5)
  got_t = small.loglikelihood([Instance("loglikelihood", {}, (long_ctx, "cd"), 0)])
  np.testing.assert_allclose(got_t[0][0], manual_t, rtol=1e-5)
  with pytest.raises(ValueError, match="longer than max_length"):
    small.loglikelihood([Instance("loglikelihood", {}, ("x", "a continuation far too long"), 0)])


@pytest.mark.slow
def test_command_line(model_dir, tmp_path):
  """`python -m itjax.eval.lm_eval_backend` registers the backend and runs lm-eval's command line."""
  _task_dir(tmp_path, "itjax_cli_mc", MC_DOCS[:2], {
      "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "choices",
      "doc_to_target": "label", "metric_list": [{"metric": "acc"}]})
  out = subprocess.run([sys.executable, "-m", "itjax.eval.lm_eval_backend", "--model", "itjax", "--model_args",
                        f"pretrained={model_dir}", "--batch_size", "4", "--tasks", "itjax_cli_mc", "--include_path",
                        str(tmp_path), "--output_path", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(TINY)))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "itjax_cli_mc" in out.stdout and "acc" in out.stdout
