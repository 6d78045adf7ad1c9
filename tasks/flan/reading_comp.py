"""Reading comprehension: BoolQ, DROP, MultiRC, OpenBookQA, SQuAD v1.1 and v2.0.

BoolQ and MultiRC answer no / yes, OpenBookQA picks one of its four choices;
DROP and SQuAD are answered by generation (first gold answer as the target,
"unanswerable" for SQuAD v2's unanswerable questions, as in FLAN).
"""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TRAIN_VAL, TRAIN_VAL_TEST, Features, has_index, pick, register, register_labeled

CLUSTER = "reading_comp"
NO_YES = ("no", "yes")  # False, True
UNANSWERABLE = "unanswerable"

BOOLQ = [
    T("{passage}\n\nBased on the text above, answer this question: {question}"),
    T("Passage: {passage}\n\nQuestion: {question}"),
    T("Read the passage and answer the yes/no question.\n\n{passage}\n\n{question}"),
    T("{passage}\n\nIs the answer to \"{question}\" yes or no?"),
    T("Answer with yes or no after reading the text.\n\nText: {passage}\nQuestion: {question}"),
    T("{passage}\nQ: {question}\nA:"),
    T("Here is an article: {passage}\n\nUsing it, answer: {question}"),
    T("{question}\n\nUse this passage to decide: {passage}"),
    T("{passage}\n\nWrite a yes/no question about the passage whose answer is \"{answer}\".", "{question}",
      reverse=True),
]

# DROP and SQuAD: a passage and a question answered with a span or a number.
EXTRACTIVE = [
    T("{passage}\n\nAnswer the question based on the passage: {question}"),
    T("Passage: {passage}\nQuestion: {question}\nAnswer:"),
    T("Read the passage and answer the question.\n\n{passage}\n\n{question}"),
    T("{passage}\n\n{question}"),
    T("Answer this question about the text below: {question}\n\n{passage}"),
    T("Here is an article: {passage}\n\nQ: {question}"),
    T("Use the information in this passage to answer the question.\n{passage}\nQuestion: {question}"),
    T("{passage}\n\nWrite a question about this passage whose answer is \"{answer}\".", "{question}", reverse=True),
]

SQUAD = EXTRACTIVE + [
    T("Read this text about {title} and answer the question.\n\n{passage}\n\n{question}"),
    T("Title: {title}\n\n{passage}\n\nQ: {question}"),
]

SQUAD_V2 = [
    T("{passage}\n\nAnswer the question based on the passage; if it cannot be answered, say \"unanswerable\". "
      "{question}"),
    T("Passage: {passage}\nQuestion: {question}\nAnswer (or \"unanswerable\"):"),
    T("Read this text about {title} and answer the question. If the text does not contain the answer, write "
      "\"unanswerable\".\n\n{passage}\n\n{question}"),
    T("{passage}\n\n{question} (If the question is unanswerable, say \"unanswerable\")"),
    T("Title: {title}\n\n{passage}\n\nQ: {question}\nIf you can't answer from the text, reply \"unanswerable\"."),
    T("Answer this question about the text below, or say it is unanswerable: {question}\n\n{passage}"),
    T("Here is an article: {passage}\n\nCan you answer this question from it? {question}"),
    T("{passage}\n\nWrite a question about this passage whose answer is \"{answer}\".", "{question}", reverse=True),
]

MULTIRC = [
    T("{paragraph}\n\nQuestion: \"{question}\"\nResponse: \"{response}\"\n\nDoes the response correctly answer the "
      "question?"),
    T("{paragraph}\n\nBased on the paragraph, is \"{response}\" a correct answer to \"{question}\"?"),
    T("Read the text and decide whether the answer is correct.\n\nText: {paragraph}\nQuestion: {question}\n"
      "Answer: {response}"),
    T("{paragraph}\n\nQ: {question}\nProposed answer: {response}\n\nIs the proposed answer right?"),
    T("Paragraph: {paragraph}\n\nAfter reading the paragraph, would you say that \"{response}\" answers the question "
      "\"{question}\"?"),
    T("{paragraph}\n\nGiven the text, is this answer correct? Question: {question} Answer: {response}"),
    T("Here is a passage: {paragraph}\n\nSomeone answered the question \"{question}\" with \"{response}\". Are they "
      "right?"),
    T("Paragraph: {paragraph}\n\nQuestion: {question}\n\nWrite an answer such that \"Is the answer correct?\" would be "
      "answered with \"{answer}\".", "{response}", reverse=True),
]

OPENBOOKQA = [
    T("{question}"),
    T("Fact: {fact}\nQuestion: {question}"),
    T("Use this fact to answer the question: {fact}\n\n{question}"),
    T("{fact}\n\nGiven the fact above, answer the question: {question}"),
    T("Question: {question}\n\nWhat is the correct answer?"),
    T("Read the fact and pick the answer.\nFact: {fact}\nQuestion: {question}"),
    T("Science question: {question}\nHint: {fact}"),
    T("Write a multiple-choice science question that can be answered with the fact \"{fact}\" and whose answer is "
      "\"{answer}\".", "{question}", reverse=True),
]


def boolq_question(ex: Features) -> tf.Tensor:
  # BoolQ questions are lowercase and have no question mark.
  return tf.strings.regex_replace(tf.strings.strip(ex["question"]), r"\?*$", "?", replace_global=False)


def drop(ex: Features) -> Features:
  return {"passage": ex["passage"], "question": ex["question"], "answer": ex["answer"]}


def _title(ex: Features) -> tf.Tensor:
  return tf.strings.regex_replace(ex["title"], "_", " ")


def squad(ex: Features) -> Features:
  return {"title": _title(ex), "passage": ex["context"], "question": ex["question"],
          "answer": ex["answers"]["text"][0]}


def squad_v2(ex: Features) -> Features:
  first = tf.concat([ex["answers"]["text"], [UNANSWERABLE]], axis=0)[0]  # "unanswerable" when there is no answer
  answer = tf.where(ex["is_impossible"], UNANSWERABLE, first)
  return {"title": _title(ex), "passage": ex["context"], "question": ex["question"], "answer": answer}


def openbookqa(ex: Features) -> Features:
  q = ex["question"]
  options = tf.stack([q["choice_A"], q["choice_B"], q["choice_C"], q["choice_D"]])
  return {"question": q["stem"], "fact": ex["fact1"], "options": options, "answer": pick(options, ex["answerKey"])}


def register_all() -> list[str]:
  names = register_labeled("boolq", CLUSTER, "super_glue/boolq:1.0.2", TRAIN_VAL, BOOLQ, label="label",
                           options=NO_YES, fields={"passage": "passage", "question": boolq_question})
  names += register("drop", CLUSTER, "drop:2.0.0", {"train": "train", "validation": "dev"}, EXTRACTIVE,
                    ("passage", "question"), drop)
  names += register_labeled("multirc", CLUSTER, "super_glue/multirc:1.0.2", TRAIN_VAL, MULTIRC, label="label",
                            options=NO_YES,
                            fields={"paragraph": "paragraph", "question": "question", "response": "answer"})
  names += register("openbookqa", CLUSTER, "openbookqa:0.1.0", TRAIN_VAL_TEST, OPENBOOKQA, ("question", "fact"),
                    openbookqa, keep=lambda ex: has_index(ex["answerKey"], 4), has_options=True)
  names += register("squad_v1", CLUSTER, "squad/v1.1:3.0.0", TRAIN_VAL, SQUAD, ("title", "passage", "question"),
                    squad, keep=lambda ex: tf.size(ex["answers"]["text"]) > 0)
  names += register("squad_v2", CLUSTER, "squad/v2.0:3.0.0", TRAIN_VAL, SQUAD_V2, ("title", "passage", "question"),
                    squad_v2)
  return names


TASKS = register_all()
