"""Metrics against hand-computed values and against the reference libraries (sacrebleu, rouge-score)."""

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from itjax.errors import UserError
from itjax.eval import metrics


def test_exact_match_unchanged():
  assert metrics.exact_match(["a", " b "], ["a", "b"]) == 100.0
  assert metrics.exact_match(["a", "b"], ["a", "c"]) == 50.0


def test_squad_normalize():
  # lower -> drop punctuation ("brown-fox" -> "brownfox") -> drop whole-word articles -> collapse whitespace.
  assert metrics.squad_normalize("  The  Quick, brown-fox an apple ") == "quick brownfox apple"
  assert metrics.squad_normalize("A banana, the theme") == "banana theme"  # articles only as whole words


def test_squad_hand_computed():
  targets = [["a cat sat down"], ["a cat"], ["Paris", "France Paris"], ["cat"]]
  predictions = ["the cat sat", "The Cat!", "Paris France", "dog"]
  # 1: "cat sat" vs "cat sat down": common 2, P = 2/2, R = 2/3, F1 = 2*(1*2/3)/(1+2/3) = 0.8; EM 0.
  # 2: "cat" vs "cat": EM 1, F1 1.
  # 3: vs "paris": P = 1/2, R = 1, F1 = 2/3; vs "france paris": P = R = 1, F1 = 1 -> max 1. EM 0 (order differs).
  # 4: no overlap: EM 0, F1 0.
  assert metrics.squad_exact_match(targets, predictions) == pytest.approx(100 * 1 / 4)
  assert metrics.squad_f1(targets, predictions) == pytest.approx(100 * (0.8 + 1 + 1 + 0) / 4)
  assert metrics.squad_f1([["a cat sat down"]], ["the cat sat"]) == pytest.approx(80.0)
  assert metrics.squad_exact_match(["The answer"], ["answer."]) == 100.0  # a bare string is one answer


def test_squad_errors():
  with pytest.raises(ValueError):
    metrics.squad_f1([[]], ["x"])
  with pytest.raises(ValueError):
    metrics.squad_exact_match([["a"]], ["a", "b"])


def test_accuracy():
  assert metrics.accuracy(["a", "b", "c", "d"], ["a", "x", "c", " d"]) == 50.0  # no whitespace stripping
  assert metrics.accuracy([1, 0], [1, 1]) == 50.0


_HYPS = ["the cat sat on the mat today", "a quick brown fox jumps over the dog", "hello there my good friend"]
_REFS_A = ["the cat sat on a mat today", "the quick brown fox jumped over the lazy dog", "hello there my dear friend"]
_REFS_B = ["a cat was sitting on the mat", "a quick brown fox jumps over a dog", "hi there my good friend"]


def test_bleu_matches_sacrebleu():
  assert metrics.bleu(_REFS_A, _HYPS) == pytest.approx(sacrebleu.corpus_bleu(_HYPS, [_REFS_A], tokenize="intl").score)
  assert metrics.bleu(_REFS_A, _HYPS, tokenize="13a") == pytest.approx(sacrebleu.corpus_bleu(_HYPS, [_REFS_A]).score)
  # Several references per example: sacrebleu wants them transposed into reference streams.
  multi = [[a, b] for a, b in zip(_REFS_A, _REFS_B, strict=True)]
  expected = sacrebleu.corpus_bleu(_HYPS, [_REFS_A, _REFS_B], tokenize="intl").score
  assert metrics.bleu(multi, _HYPS) == pytest.approx(expected)
  assert expected > sacrebleu.corpus_bleu(_HYPS, [_REFS_A], tokenize="intl").score  # the corpus tells them apart
  # A different number of references per example pads with None.
  ragged = [[_REFS_A[0], _REFS_B[0]], [_REFS_A[1]], _REFS_A[2]]
  expected = sacrebleu.corpus_bleu(_HYPS, [_REFS_A, [_REFS_B[0], None, None]], tokenize="intl").score
  assert metrics.bleu(ragged, _HYPS) == pytest.approx(expected)


def test_bleu_identical_is_100():
  assert metrics.bleu(_HYPS, _HYPS) == pytest.approx(100.0)


def _reference_rouge(pairs):
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
  scores = [scorer.score(t.replace(" . ", " .\n"), p.replace(" . ", " .\n")) for t, p in pairs]
  return {k: 100 * sum(s[k].fmeasure for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeLsum")}


def test_rouge_matches_rouge_score():
  targets = ["the cats are sitting on the mat . they purr", "police arrested five people in london"]
  predictions = ["a cat sat on the mat . it purrs loudly", "five people were arrested by police"]
  got = metrics.rouge(targets, predictions)
  want = _reference_rouge(list(zip(targets, predictions, strict=True)))
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k])
  # Hand value: "the cat sat" vs "the cat ran": 2 of 3 unigrams each way -> F = 2/3.
  assert metrics.rouge(["the cat sat"], ["the cat ran"])["rouge1"] == pytest.approx(200 / 3)


def test_rouge_lsum_uses_sentence_newlines():
  # With " . " -> " .\n" each sentence matches on its own, so rougeLsum is 100; without the split the LCS of
  # "cats purr dogs bark" and "dogs bark cats purr" is 2 of 4 tokens (50). Bigrams: 2 of 3 shared.
  got = metrics.rouge(["cats purr . dogs bark"], ["dogs bark . cats purr"])
  assert got["rougeLsum"] == pytest.approx(100.0)
  assert got["rouge2"] == pytest.approx(200 / 3)


def test_rouge_identical_and_multi_reference():
  assert metrics.rouge(["The quick brown fox . It jumps"], ["The quick brown fox . It jumps"]) == pytest.approx(
      {"rouge1": 100.0, "rouge2": 100.0, "rougeLsum": 100.0})
  assert metrics.rouge([["dogs bark", "cats purr"]], ["cats purr"])["rouge1"] == pytest.approx(100.0)


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_empty_is_nan_and_mismatch_raises(name):
  fn = metrics.METRICS[name]
  value = fn([], [])
  values = value.values() if isinstance(value, dict) else [value]
  assert all(math.isnan(v) for v in values)
  with pytest.raises(ValueError):
    fn(["a", "b"], ["a"])


def test_compute():
  out = metrics.compute(["exact_match", "rouge", "bleu"], ["the cat sat"], ["the cat sat"])
  assert set(out) == {"exact_match", "rouge1", "rouge2", "rougeLsum", "bleu"}
  assert out["exact_match"] == 100.0 and out["rouge1"] == pytest.approx(100.0)
  assert metrics.compute(["squad_f1"], [["a cat sat down"]], ["the cat sat"]) == {"squad_f1": pytest.approx(80.0)}


def test_unknown_metric_names_nearest():
  with pytest.raises(UserError, match="exact_match"):
    metrics.compute(["exact_mach"], ["a"], ["a"])
