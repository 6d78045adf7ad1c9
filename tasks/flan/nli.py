"""Natural language inference: ANLI R1-R3, CB, MNLI, QNLI, RTE, SNLI, WNLI.

Options follow FLAN: three-way datasets answer yes / it is not possible to
tell / no (ANLI and CB with FLAN's capitalized wording), two-way ones yes / no,
each list in the order of the TFDS label names.
"""

from __future__ import annotations

from itjax.data.templates import Template as T

from ._common import TRAIN_VAL, TRAIN_VAL_TEST, register_labeled

CLUSTER = "nli"
THREE_WAY = ("yes", "it is not possible to tell", "no")  # entailment, neutral, contradiction
ANLI = ("Yes", "It's impossible to say", "No")  # labels e, n, c
CB = ("Yes", "No", "It's impossible to say")  # labels entailment, contradiction, neutral
ENTAILMENT_FIRST = ("yes", "no")  # entailment, not_entailment
NOT_ENTAILMENT_FIRST = ("no", "yes")  # WNLI: not_entailment, entailment

PREMISE_HYPOTHESIS = [
    T("Premise: {premise}\nHypothesis: {hypothesis}\n\nDoes the premise entail the hypothesis?"),
    T("{premise}\n\nBased on the paragraph above, can we conclude that \"{hypothesis}\"?"),
    T("Read the text and decide whether the sentence after it is true.\n\n{premise}\n\nSentence: {hypothesis}"),
    T("{premise}\nQuestion: does this mean that \"{hypothesis}\"?"),
    T("Suppose \"{premise}\" Can we infer that \"{hypothesis}\"?"),
    T("Here is a statement: {premise}\n\nIs the following statement also true?\n{hypothesis}"),
    T("Given the premise \"{premise}\", is the hypothesis \"{hypothesis}\" true?"),
    T("{premise}\n\nIf the text above is true, is the following also true?\n{hypothesis}"),
    T("Context: {premise}\n\nClaim: {hypothesis}\n\nIs the claim supported by the context?"),
    T("Premise: {premise}\n\nWrite a hypothesis for which the answer to \"Does the premise entail the hypothesis?\" "
      "is \"{answer}\".", "{hypothesis}", reverse=True),
    T("Write a premise and a hypothesis that go together.", "Premise: {premise}\nHypothesis: {hypothesis}",
      reverse=True),
]

QUESTION_SENTENCE = [
    T("Does the sentence \"{sentence}\" answer the question \"{question}\"?"),
    T("Question: {question}\nSentence: {sentence}\n\nDoes the sentence give a valid answer to the question?"),
    T("{question}\n\nIs \"{sentence}\" a good answer to the question above?"),
    T("Does the text \"{sentence}\" contain the correct answer to \"{question}\"?"),
    T("Q: {question}\nA: {sentence}\n\nDoes the answer correctly answer the question?"),
    T("Someone asked: {question}\nThe reply was: {sentence}\n\nDoes the reply answer the question?"),
    T("Question: {question}\n\nCan the answer to this question be found in the following sentence?\n{sentence}"),
    T("Consider the question \"{question}\". Is it answered by the sentence \"{sentence}\"?"),
    T("{sentence}\n\nWrite a question about the sentence above.", "{question}", reverse=True),
]


def _pair(premise: str, hypothesis: str) -> dict[str, str]:
  return {"premise": premise, "hypothesis": hypothesis}


def register_all() -> list[str]:
  names = []
  for r in ("r1", "r2", "r3"):
    names += register_labeled(f"anli_{r}", CLUSTER, f"anli/{r}:0.1.0", TRAIN_VAL_TEST, PREMISE_HYPOTHESIS,
                              label="label", options=ANLI, fields=_pair("context", "hypothesis"))
  names += register_labeled("cb", CLUSTER, "super_glue/cb:1.0.2", TRAIN_VAL, PREMISE_HYPOTHESIS, label="label",
                            options=CB, fields=_pair("premise", "hypothesis"))
  names += register_labeled("mnli", CLUSTER, "glue/mnli:2.0.0",
                            {"train": "train", "validation": "validation_matched",
                             "validation_mismatched": "validation_mismatched"},
                            PREMISE_HYPOTHESIS, label="label", options=THREE_WAY,
                            fields=_pair("premise", "hypothesis"))
  names += register_labeled("qnli", CLUSTER, "glue/qnli:2.0.0", TRAIN_VAL, QUESTION_SENTENCE, label="label",
                            options=ENTAILMENT_FIRST, fields={"question": "question", "sentence": "sentence"})
  names += register_labeled("rte", CLUSTER, "glue/rte:2.0.0", TRAIN_VAL, PREMISE_HYPOTHESIS, label="label",
                            options=ENTAILMENT_FIRST, fields=_pair("sentence1", "sentence2"))
  # SNLI marks examples without a gold label with -1: register_labeled drops them.
  names += register_labeled("snli", CLUSTER, "snli:1.1.0", TRAIN_VAL_TEST, PREMISE_HYPOTHESIS, label="label",
                            options=THREE_WAY, fields=_pair("premise", "hypothesis"))
  names += register_labeled("wnli", CLUSTER, "glue/wnli:2.0.0", TRAIN_VAL, PREMISE_HYPOTHESIS, label="label",
                            options=NOT_ENTAILMENT_FIRST, fields=_pair("sentence1", "sentence2"))
  return names


TASKS = register_all()
