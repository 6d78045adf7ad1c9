"""Scoring predictions against gold answers.

Every metric takes `(targets, predictions)` and returns a percentage (0-100), or a dict of percentages for metrics
with several scores (rouge). Empty inputs score NaN; a length mismatch raises ValueError. Tasks name their metrics by
string through `METRICS` / `compute`. Metrics in `PER_EXAMPLE` are means of per-example scores (so a group's score
is the mean of its rows'); BLEU is a corpus statistic and only scores a whole group.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import sacrebleu
from rouge_score import rouge_scorer

from itjax.errors import UserError

Answers = str | Sequence[str]


def _check_lengths(targets: Sequence, predictions: Sequence) -> bool:
  """Raises on a length mismatch; True when there is something to score (empty inputs score NaN)."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  return len(targets) > 0


def _answers(target: Answers) -> list[str]:
  """One example's acceptable answers as a list: a bare string is one answer."""
  answers = [target] if isinstance(target, str) else list(target)
  if not answers:
    raise ValueError("an example has no acceptable answers (empty target list)")
  return answers


def _mean(per_example: Sequence[float]) -> float:
  return sum(per_example) / len(per_example) if per_example else float("nan")


def exact_match_per_example(targets: Sequence[str], predictions: Sequence[str]) -> list[float]:
  """100 where the prediction equals the target after stripping surrounding whitespace, else 0."""
  _check_lengths(targets, predictions)
  return [100.0 * (t.strip() == p.strip()) for t, p in zip(targets, predictions, strict=True)]


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> float:
  """Percentage of predictions equal to the target after stripping surrounding whitespace."""
  return _mean(exact_match_per_example(targets, predictions))


def accuracy_per_example(targets: Sequence, predictions: Sequence) -> list[float]:
  """100 where the prediction is exactly the target (no normalization), else 0."""
  _check_lengths(targets, predictions)
  return [100.0 * (t == p) for t, p in zip(targets, predictions, strict=True)]


def accuracy(targets: Sequence, predictions: Sequence) -> float:
  """Percentage of predictions exactly equal to the target (no normalization, like T5's `accuracy`)."""
  return _mean(accuracy_per_example(targets, predictions))


# --- SQuAD v1.1 (official evaluate-v1.1.py semantics) ---------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
  """The SQuAD v1.1 script's normalize_answer: lowercase, drop punctuation, drop articles, collapse whitespace."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def _squad_f1_one(prediction: str, ground_truth: str) -> float:
  """Token-overlap F1 (0-1) of one prediction against one answer, as in the SQuAD v1.1 script."""
  pred_tokens = squad_normalize(prediction).split()
  gold_tokens = squad_normalize(ground_truth).split()
  num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(pred_tokens)
  recall = num_same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_exact_match_per_example(targets: Sequence[Answers], predictions: Sequence[str]) -> list[float]:
  """Per example: 100 when the normalized prediction equals any normalized acceptable answer, else 0."""
  _check_lengths(targets, predictions)
  return [100.0 * max(float(squad_normalize(p) == squad_normalize(a)) for a in _answers(t))
          for t, p in zip(targets, predictions, strict=True)]


def squad_exact_match(targets: Sequence[Answers], predictions: Sequence[str]) -> float:
  """SQuAD v1.1 exact match (%): normalized prediction equals any normalized acceptable answer."""
  return _mean(squad_exact_match_per_example(targets, predictions))


def squad_f1_per_example(targets: Sequence[Answers], predictions: Sequence[str]) -> list[float]:
  """Per example: SQuAD v1.1 token F1 (%), the max over the example's acceptable answers."""
  _check_lengths(targets, predictions)
  return [100.0 * max(_squad_f1_one(p, a) for a in _answers(t)) for t, p in zip(targets, predictions, strict=True)]


def squad_f1(targets: Sequence[Answers], predictions: Sequence[str]) -> float:
  """SQuAD v1.1 token F1 (%), taking the max over each example's acceptable answers."""
  return _mean(squad_f1_per_example(targets, predictions))


# --- BLEU / ROUGE --------------------------------------------------------------------------------------------------


def bleu(targets: Sequence[Answers], predictions: Sequence[str], tokenize: str = "intl") -> float:
  """Corpus BLEU via sacrebleu; each target is one reference or a list of references.

  `tokenize="intl"` matches T5's `t5.evaluation.metrics.bleu`; pass "13a" for sacrebleu's WMT default. Examples may
  have different numbers of references (sacrebleu skips the None padding).
  """
  if not _check_lengths(targets, predictions):
    return float("nan")
  refs = [_answers(t) for t in targets]
  n_refs = max(len(r) for r in refs)
  # sacrebleu wants one stream per reference position: references[j][i] is reference j of example i.
  streams = [[r[j] if j < len(r) else None for r in refs] for j in range(n_refs)]
  return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize).score)


def sentence_bleu(target: Answers, prediction: str, tokenize: str = "intl") -> float:
  """sacrebleu's smoothed sentence BLEU of one prediction: a per-row stand-in for corpus BLEU (for display only;
  a group's BLEU is `bleu` over the group, not a mean of these)."""
  return float(sacrebleu.sentence_bleu(prediction, _answers(target), tokenize=tokenize).score)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")


def _prepare_summary(summary: str) -> str:
  """T5's rouge preprocessing: newline after each " . " so rougeLsum sees sentences (rouge_score splits on \\n)."""
  return summary.replace(" . ", " .\n")


def rouge_per_example(targets: Sequence[Answers], predictions: Sequence[str],
                      use_stemmer: bool = True) -> list[dict[str, float]]:
  """Per example: ROUGE-1/2/Lsum F-measure (%), against the best reference when there are several."""
  _check_lengths(targets, predictions)
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
  out = []
  for target, prediction in zip(targets, predictions, strict=True):
    refs = [_prepare_summary(r) for r in _answers(target)]
    pred = _prepare_summary(prediction)
    scores = scorer.score(refs[0], pred) if len(refs) == 1 else scorer.score_multi(refs, pred)
    out.append({k: 100.0 * scores[k].fmeasure for k in ROUGE_TYPES})
  return out


def rouge(targets: Sequence[Answers], predictions: Sequence[str], use_stemmer: bool = True) -> dict[str, float]:
  """Mean ROUGE-1/2/Lsum F-measure (%) over examples, with T5's sentence-newline preprocessing for rougeLsum.

  A target that is a list of references scores against its best reference (rouge_score's score_multi). T5 itself
  aggregates with a bootstrap (the median of resampled means); this is the plain mean.
  """
  per_example = rouge_per_example(targets, predictions, use_stemmer)
  return {k: _mean([s[k] for s in per_example]) for k in ROUGE_TYPES}


# --- Registry ------------------------------------------------------------------------------------------------------

METRICS: dict[str, Callable[..., float | dict[str, float]]] = {
    "exact_match": exact_match,
    "accuracy": accuracy,
    "squad_exact_match": squad_exact_match,
    "squad_f1": squad_f1,
    "bleu": bleu,
    "rouge": rouge,
}


# Metrics that are means of per-example scores: name -> (targets, predictions) -> per example, {score name: %}.
PER_EXAMPLE: dict[str, Callable[[Sequence, Sequence[str]], list[dict[str, float]]]] = {
    "exact_match": lambda t, p: [{"exact_match": v} for v in exact_match_per_example(t, p)],
    "accuracy": lambda t, p: [{"accuracy": v} for v in accuracy_per_example(t, p)],
    "squad_exact_match": lambda t, p: [{"squad_exact_match": v} for v in squad_exact_match_per_example(t, p)],
    "squad_f1": lambda t, p: [{"squad_f1": v} for v in squad_f1_per_example(t, p)],
    "rouge": rouge_per_example,
}


def score_names(name: str) -> tuple[str, ...]:
  """The names of the scores a metric returns (rouge: rouge1, rouge2, rougeLsum; the others: their own name)."""
  get_metric(name)
  return ROUGE_TYPES if name == "rouge" else (name,)


def get_metric(name: str) -> Callable[..., float | dict[str, float]]:
  """The metric function registered under `name`; a UserError suggests the nearest names when it is unknown."""
  if name not in METRICS:
    near = difflib.get_close_matches(name, METRICS, n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise UserError(f"unknown metric {name!r}{hint} (known: {', '.join(sorted(METRICS))})")
  return METRICS[name]


def compute(names: Sequence[str], targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
  """Runs each named metric; a metric returning several scores (rouge) contributes its own keys."""
  if isinstance(names, str):
    names = [names]
  out: dict[str, float] = {}
  for name in names:
    value = get_metric(name)(targets, predictions)
    if isinstance(value, dict):
      out.update({k: float(v) for k, v in value.items()})
    else:
      out[name] = float(value)
  return out

