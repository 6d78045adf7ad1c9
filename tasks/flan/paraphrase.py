"""Paraphrase detection: MRPC, QQP, PAWS-Wiki, STS-B.

Listed under ("paraphrase", "nli"): FLAN's inter-cluster splits drop the
paraphrase cluster from training when NLI is held out and vice versa
(flan/task_splits.py), and listing "nli" as a secondary cluster of every
paraphrase dataset makes the held-out rule do exactly that.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TRAIN_VAL, TRAIN_VAL_TEST, Features, register, register_labeled

CLUSTERS = ("paraphrase", "nli")
NO_YES = ("no", "yes")  # not_equivalent / not_duplicate / different_meaning first
SCORES = tuple(str(i) for i in range(6))

SENTENCE_PAIR = [
    T("Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nDo these two sentences mean the same thing?"),
    T("\"{sentence1}\"\n\"{sentence2}\"\n\nAre these two sentences paraphrases of each other?"),
    T("Do the following sentences say the same thing?\n\n{sentence1}\n{sentence2}"),
    T("{sentence1}\n\nDoes that have the same meaning as \"{sentence2}\"?"),
    T("Is the second sentence a paraphrase of the first?\nFirst: {sentence1}\nSecond: {sentence2}"),
    T("Are these sentences semantically equivalent?\n1. {sentence1}\n2. {sentence2}"),
    T("Here are two sentences:\n{sentence1}\n{sentence2}\n\nDo they convey the same information?"),
    T("Sentence: {sentence1}\n\nWrite another sentence such that the answer to \"Do the two sentences mean the same "
      "thing?\" is \"{answer}\".", "{sentence2}", reverse=True),
]

QUESTION_PAIR = [
    T("Question 1: {question1}\nQuestion 2: {question2}\n\nAre these two questions asking the same thing?"),
    T("\"{question1}\" and \"{question2}\": are these duplicate questions?"),
    T("Would an answer to \"{question1}\" also answer \"{question2}\"?"),
    T("{question1}\n{question2}\n\nDo these questions have the same meaning?"),
    T("Are the following two questions paraphrases of each other?\n{question1}\n{question2}"),
    T("First question: {question1}\nSecond question: {question2}\n\nIs the second a duplicate of the first?"),
    T("Check whether these questions ask the same thing: {question1} / {question2}"),
    T("Question: {question1}\n\nWrite another question such that the answer to \"Are the two questions duplicates?\" "
      "is \"{answer}\".", "{question2}", reverse=True),
]

STSB = [
    T("Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nOn a scale from 0 to 5, how similar are these sentences "
      "in meaning?"),
    T("{sentence1}\n{sentence2}\n\nRate the similarity of these two sentences from 0 (unrelated) to 5 (equivalent)."),
    T("How close in meaning are \"{sentence1}\" and \"{sentence2}\"? Answer with a number from 0 to 5."),
    T("Score the similarity of the two sentences from 0 to 5.\nA: {sentence1}\nB: {sentence2}"),
    T("Do these sentences mean the same thing? Give a score from 0 (not at all) to 5 (exactly the same).\n"
      "{sentence1}\n{sentence2}"),
    T("Sentence one: {sentence1}\nSentence two: {sentence2}\nSimilarity (0-5):"),
    T("Sentence: {sentence1}\n\nWrite a sentence whose similarity to it, on a scale from 0 to 5, is {answer}.",
      "{sentence2}", reverse=True),
]


def stsb(ex: Features) -> Features:
  """The 0-5 similarity score, rounded to the nearest integer option."""
  score = tf.clip_by_value(tf.cast(tf.round(ex["label"]), tf.int32), 0, 5)
  return {"sentence1": ex["sentence1"], "sentence2": ex["sentence2"], "options": tf.constant(SCORES),
          "answer": tf.strings.as_string(score)}


def _qqp_text(key: str) -> Callable[[Features], tf.Tensor]:
  return lambda ex: tf.strings.regex_replace(ex[key], '""', "'")


def register_all() -> list[str]:
  pair = {"sentence1": "sentence1", "sentence2": "sentence2"}
  names = register_labeled("mrpc", CLUSTERS, "glue/mrpc:2.0.0", TRAIN_VAL, SENTENCE_PAIR, label="label",
                           options=NO_YES, fields=pair)
  names += register_labeled("qqp", CLUSTERS, "glue/qqp:2.0.0", TRAIN_VAL, QUESTION_PAIR, label="label",
                            options=NO_YES, fields={"question1": _qqp_text("question1"),
                                                    "question2": _qqp_text("question2")})
  names += register_labeled("paws_wiki", CLUSTERS, "paws_wiki/labeled_final_raw:1.1.0", TRAIN_VAL_TEST,
                            SENTENCE_PAIR, label="label", options=NO_YES, fields=pair)
  # The GLUE test split is unlabeled (-1).
  names += register("stsb", CLUSTERS, "glue/stsb:2.0.0", TRAIN_VAL, STSB, ("sentence1", "sentence2"), stsb,
                    keep=lambda ex: ex["label"] >= 0, has_options=True)
  return names


TASKS = register_all()
