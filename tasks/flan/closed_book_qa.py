"""Closed-book QA: ARC (Easy, Challenge), Natural Questions (open), TriviaQA (no context).

ARC is multiple choice (options: its choices); NQ and TriviaQA are answered
by generation, with the first listed answer as the target.
"""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TRAIN_VAL, TRAIN_VAL_TEST, Features, register

CLUSTER = "closed_book_qa"

ARC = [
    T("{question}"),
    T("Question: {question}\nAnswer:"),
    T("Answer the following science question.\n\n{question}"),
    T("{question}\n\nPick the correct answer."),
    T("Here is a grade-school science question: {question}\n\nWhat is the answer?"),
    T("Q: {question}\nWhich choice is right?"),
    T("Solve this multiple-choice question: {question}"),
    T("Write a science question whose answer is \"{answer}\".", "{question}", reverse=True),
]

OPEN_QA = [
    T("{question}"),
    T("Q: {question}\nA:"),
    T("Answer this question: {question}"),
    T("Please answer the following question. {question}"),
    T("What is the answer to this question? {question}"),
    T("Question: {question}\nAnswer:"),
    T("Here is a trivia question: {question}\nWhat's the answer?"),
    T("Answer the question from memory: {question}"),
    T("Write a question whose answer is \"{answer}\".", "{question}", reverse=True),
    T("What question would have \"{answer}\" as its answer?", "{question}", reverse=True),
]


def arc(ex: Features) -> Features:
  texts = ex["choices"]["text"]
  match = tf.equal(ex["choices"]["label"], ex["answerKey"])
  return {"question": ex["question"], "options": texts, "answer": tf.boolean_mask(texts, match)[0]}


def natural_questions(ex: Features) -> Features:
  # NQ-open questions are lowercase and have no question mark.
  question = tf.strings.regex_replace(tf.strings.strip(ex["question"]), r"\?*$", "?", replace_global=False)
  return {"question": question, "answer": ex["answer"][0]}


def trivia_qa(ex: Features) -> Features:
  return {"question": ex["question"], "answer": ex["answer"]["value"]}


def register_all() -> list[str]:
  names = []
  for level in ("Easy", "Challenge"):
    names += register(f"arc_{level.lower()}", CLUSTER, f"ai2_arc/ARC-{level}:1.0.0", TRAIN_VAL_TEST, ARC,
                      ("question",), arc, has_options=True,
                      keep=lambda ex: tf.reduce_any(tf.equal(ex["choices"]["label"], ex["answerKey"])))
  names += register("natural_questions", CLUSTER, "natural_questions_open:1.0.0", TRAIN_VAL, OPEN_QA, ("question",),
                    natural_questions, keep=lambda ex: tf.size(ex["answer"]) > 0)
  # The TriviaQA test split has no answers (empty value; dropped as an empty answer).
  names += register("trivia_qa", CLUSTER, "trivia_qa/rc.nocontext:1.1.0", TRAIN_VAL, OPEN_QA, ("question",),
                    trivia_qa)
  return names


TASKS = register_all()
