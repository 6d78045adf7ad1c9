"""Miscellaneous (FLAN's "misc" cluster): CoQA, QuAC, TREC, CoLA, WiC, Math (linear equations), Fix Punctuation.

CoQA is answered as FLAN does: all questions of a story at once, numbered,
with the numbered answers as the target. Fix Punctuation restores the
punctuation stripped from English ParaCrawl sentences (FLAN's construction).
"""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import CARVED, TEST_AS_VAL, TRAIN_VAL, Features, numbered, register, register_labeled

CLUSTER = "misc"
TREC = ("description", "entity", "abbreviation", "human", "numeric", "location")  # DESC ENTY ABBR HUM NUM LOC
COLA = ("unacceptable", "acceptable")
WIC = ("different meanings", "the same meaning")  # False, True

COQA = [
    T("{story}\n\nAnswer the following questions:\n{questions}"),
    T("Read the text and answer the questions.\n\n{story}\n\n{questions}"),
    T("{story}\n\nAnswer these questions in order, numbering your answers:\n{questions}"),
    T("Text: {story}\n\nQuestions:\n{questions}\n\nAnswers:"),
    T("Here is a story: {story}\n\nNow answer each question:\n{questions}"),
    T("{story}\n\nUsing the story above, respond to the following:\n{questions}"),
    T("{story}\n\nWrite questions about the story that have these answers:\n{answer}", "{questions}", reverse=True),
]

QUAC = [
    T("{title}\n\n{background}\n\n{context}\n\nQ: {question}"),
    T("{title}\n\n{context}\n\nAnswer this question using a quote from the text above: {question}"),
    T("Read this excerpt about {title}.\n\n{context}\n\n{question}"),
    T("Background: {background}\n\n{context}\n\nQ: {question}\nA:"),
    T("Article about {title}:\n{context}\n\nAnswer with a span of the article, or CANNOTANSWER: {question}"),
    T("{context}\n\nQuestion about {title}: {question}"),
    T("{context}\n\nWrite a question about {title} that is answered by: {answer}", "{question}", reverse=True),
]

TREC_TEMPLATES = [
    T("What type of thing is the question \"{text}\" asking about?"),
    T("Question: {text}\n\nWhat kind of answer would this question have?"),
    T("Classify this question by the type of its answer: {text}"),
    T("{text}\n\nIs this question asking for a description, an entity, an abbreviation, a person, a number, or a "
      "location?"),
    T("Which category best describes the answer to this question? {text}"),
    T("Question: {text}\nAnswer type:"),
    T("What is the question \"{text}\" looking for?"),
    T("Write a question whose answer is of the type \"{answer}\".", "{text}", reverse=True),
]

COLA_TEMPLATES = [
    T("\"{sentence}\"\n\nWould a linguist rate this sentence as acceptable or unacceptable English?"),
    T("Is the following sentence grammatically acceptable?\n{sentence}"),
    T("{sentence}\n\nIs this sentence well formed?"),
    T("Judge the grammaticality of this sentence: {sentence}"),
    T("Sentence: {sentence}\nAcceptability:"),
    T("Check whether this English sentence is grammatical: {sentence}"),
    T("Test sentence: \"{sentence}\"\n\nIs it linguistically acceptable?"),
    T("Write an {answer} English sentence.", "{sentence}", reverse=True),
]

WIC_TEMPLATES = [
    T("\"{sentence1}\"\n\"{sentence2}\"\n\nDoes the word \"{word}\" have the same meaning in both sentences?"),
    T("Sentence A: {sentence1}\nSentence B: {sentence2}\n\nIs \"{word}\" used with the same meaning in A and B?"),
    T("Here is a word: {word}\nFirst use: {sentence1}\nSecond use: {sentence2}\n\nDo the two uses share a meaning?"),
    T("Does \"{word}\" mean the same thing in \"{sentence1}\" and \"{sentence2}\"?"),
    T("{sentence1}\n{sentence2}\n\nCompare the meaning of \"{word}\" in these two sentences."),
    T("Word: {word}\n1. {sentence1}\n2. {sentence2}\n\nDoes the word have the same meaning in both, or different "
      "meanings?"),
    T("Determine whether the word \"{word}\" is used in the same sense in both sentences.\n\n{sentence1}\n{sentence2}"),
    T("Write two sentences in which the word \"{word}\" has {answer}.", "{sentence1}\n{sentence2}", reverse=True),
]

MATH = [
    T("{question}"),
    T("Solve this problem: {question}"),
    T("Math problem: {question}\nWhat is the solution?"),
    T("{question}\n\nGive the value of the variable."),
    T("Work out the answer: {question}"),
    T("Q: {question}\nA:"),
    T("What is the solution of the following equation? {question}"),
    T("Write a linear equation problem whose solution is {answer}.", "{question}", reverse=True),
]

FIX_PUNCT = [
    T("{text}\n\nAdd punctuation to the text above."),
    T("Add punctuation: {text}"),
    T("This text is missing some punctuation: {text}\n\nWrite it again, correctly punctuated."),
    T("Please punctuate this sentence: {text}"),
    T("{text}\n\nCan you repeat this sentence, but add in punctuation?"),
    T("Insert the missing punctuation marks.\n\n{text}"),
    T("Remove all punctuation from this sentence: {answer}", "{text}", reverse=True),
]


def coqa(ex: Features) -> Features:
  return {"story": ex["story"], "questions": numbered(ex["questions"]),
          "answer": numbered(ex["answers"]["input_text"])}


def quac(ex: Features) -> Features:
  return {"title": ex["title"], "background": ex["background"], "context": ex["context"], "question": ex["question"],
          "answer": ex["orig_answer"]["text"]}


def math(ex: Features) -> Features:
  return {"question": ex["question"], "answer": ex["answer"]}


def fix_punct(ex: Features) -> Features:
  return {"text": tf.strings.regex_replace(ex["en"], r"[^\w\s]", ""), "answer": ex["en"]}


def register_all() -> list[str]:
  # CoQA's TFDS "test" split is the official dev set.
  names = register("coqa", CLUSTER, "coqa:1.0.0", TEST_AS_VAL, COQA, ("story", "questions"), coqa)
  names += register("quac", CLUSTER, "quac:1.0.0", TRAIN_VAL, QUAC, ("title", "background", "context", "question"),
                    quac)
  names += register_labeled("trec", CLUSTER, "trec:1.0.0", TEST_AS_VAL, TREC_TEMPLATES, label="label-coarse",
                            options=TREC, fields={"text": "text"})
  names += register_labeled("cola", CLUSTER, "glue/cola:2.0.0", TRAIN_VAL, COLA_TEMPLATES, label="label",
                            options=COLA, fields={"sentence": "sentence"})
  names += register_labeled("wic", CLUSTER, "super_glue/wic:1.0.2", TRAIN_VAL, WIC_TEMPLATES, label="label",
                            options=WIC, fields={"sentence1": "sentence1", "sentence2": "sentence2", "word": "word"})
  names += register("math", CLUSTER, "math_dataset/algebra__linear_1d:1.0.0", TEST_AS_VAL, MATH, ("question",), math)
  # Only sentences that have punctuation to restore.
  names += register("fix_punct", CLUSTER, "para_crawl/enda:1.2.0", CARVED, FIX_PUNCT, ("text",), fix_punct,
                    keep=lambda ex: tf.strings.regex_full_match(ex["en"], r"(?s).*[^\w\s].*"))
  return names


TASKS = register_all()
