"""Coreference: Definite Pronoun Resolution, Winogrande, WSC273, SuperGLUE WSC.

Winogrande and WSC273 are cast as FLAN does: the sentence up to the blank
(pronoun) is the context, and each option is a candidate followed by the rest
of the sentence. WSC273 has only a test split: its first 173 examples train,
the last 100 evaluate (every task needs a "train" split: mixtures compute
rates from it). SuperGLUE WSC (FLAN's code lists it in this cluster) asks
whether a pronoun refers to a given noun.
"""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TEST_AS_VAL, TRAIN_VAL, Features, has_index, pick, register, register_labeled

CLUSTER = "coreference"
NO_YES = ("no", "yes")  # False, True

DPR = [
    T("{sentence}\n\nWho is \"{pronoun}\" in this sentence?"),
    T("{sentence}\n\nWho or what does the pronoun \"{pronoun}\" refer to?"),
    T("In the sentence \"{sentence}\", what does \"{pronoun}\" refer to?"),
    T("Sentence: {sentence}\nPronoun: {pronoun}\n\nWhich candidate does the pronoun point to?"),
    T("Resolve the pronoun \"{pronoun}\" in: {sentence}"),
    T("{sentence}\n\nThe word \"{pronoun}\" refers to which of these?"),
    T("Read the sentence and identify what \"{pronoun}\" refers to.\n\n{sentence}"),
    T("Write a sentence in which the pronoun \"{pronoun}\" refers to {answer}.", "{sentence}", reverse=True),
]

# Winogrande and WSC273: the context is the sentence up to the blank; the options complete it.
COMPLETION = [
    T("How does the sentence end?\n\n{context}"),
    T("Complete the sentence.\n\n{context}"),
    T("{context}\n\nWhat is the most logical completion of the sentence?"),
    T("Finish the following sentence: {context}"),
    T("Which option correctly completes this sentence? {context}"),
    T("Write the rest of the sentence so that it makes sense: {context}"),
    T("{context}...\n\nChoose the ending that fits."),
    T("Here is the start of a sentence: {context}\n\nWhat comes next?"),
]

WSC = [
    T("{text}\n\nIn the passage above, does the pronoun \"{pronoun}\" refer to {noun}?"),
    T("{text}\n\nDoes \"{pronoun}\" refer to \"{noun}\" here?"),
    T("Sentence: {text}\nQuestion: is \"{pronoun}\" the same as \"{noun}\"?"),
    T("In \"{text}\", is {noun} what \"{pronoun}\" stands for?"),
    T("{text}\n\nWho is \"{pronoun}\"? Is it {noun}?"),
    T("Read the sentence and answer: does \"{pronoun}\" mean {noun}?\n\n{text}"),
    T("Coreference check.\nText: {text}\nPronoun: {pronoun}\nCandidate: {noun}\n\nDo they refer to the same thing?"),
]


def dpr(ex: Features) -> Features:
  return {"sentence": ex["sentence"], "pronoun": ex["pronoun"], "options": ex["candidates"],
          "answer": pick(ex["candidates"], ex["label"])}


def winogrande(ex: Features) -> Features:
  sentence = ex["sentence"]
  context = tf.strings.regex_replace(sentence, r"(?s)_.*", "")
  rest = tf.strings.regex_replace(sentence, r"(?s)^[^_]*_", "")
  options = tf.strings.join([tf.stack([ex["option1"], ex["option2"]]), rest])
  return {"context": context, "options": options, "answer": pick(options, ex["label"])}


def wsc273(ex: Features) -> Features:
  """Context: the text before the pronoun; options: each candidate (case fitted to the pronoun) + the rest."""
  text = ex["text"]
  length = tf.strings.length(text, unit="UTF8_CHAR")
  start = tf.clip_by_value(ex["pronoun_start"], 0, length)
  end = tf.clip_by_value(ex["pronoun_end"], start, length)
  context = tf.strings.substr(text, 0, start, unit="UTF8_CHAR")
  rest = tf.strings.substr(text, end, length - end, unit="UTF8_CHAR")
  options = tf.strings.join([tf.stack([ex["option1_normalized"], ex["option2_normalized"]]), rest])
  return {"context": context, "options": options, "answer": pick(options, ex["label"])}


def register_all() -> list[str]:
  names = register("dpr", CLUSTER, "definite_pronoun_resolution:1.1.0", TEST_AS_VAL, DPR, ("sentence", "pronoun"),
                   dpr, keep=lambda ex: has_index(ex["label"], tf.size(ex["candidates"])), has_options=True)
  # The test split is unlabeled; train_xl is the full training set.
  names += register("winogrande", CLUSTER, "winogrande:1.2.0", {"train": "train_xl", "validation": "validation"},
                    COMPLETION, ("context",), winogrande, keep=lambda ex: has_index(ex["label"], 2), has_options=True)
  # WSC273 has only its 273-example test split: train on the first 173, evaluate on the last 100.
  names += register("wsc273", CLUSTER, "wsc273:1.0.0", {"train": "test[:-100]", "validation": "test[-100:]"},
                    COMPLETION, ("context",), wsc273, keep=lambda ex: has_index(ex["label"], 2), has_options=True)
  names += register_labeled("wsc", CLUSTER, "super_glue/wsc.fixed:1.0.2", TRAIN_VAL, WSC, label="label",
                            options=NO_YES, fields={"text": "text", "noun": "span1_text", "pronoun": "span2_text"})
  return names


TASKS = register_all()
