"""Structure to text: CommonGen (GEM), DART, E2E NLG (cleaned), WebNLG.

Tables are linearized as FLAN does: DART/WebNLG triples as
"subject | predicate | object; ...", E2E attributes as "name = value, ...".
"""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TRAIN_VAL, TRAIN_VAL_TEST, Features, register

CLUSTER = "struct_to_text"

COMMON_GEN = [
    T("Concepts: {concepts}\n\nWrite a sentence that includes all these words."),
    T("Make a sentence using these words: {concepts}"),
    T("Generate a sentence describing a scene that uses the following concepts: {concepts}"),
    T("Write a sentence with the following keywords: {concepts}"),
    T("Keywords: {concepts}\n\nWhat is a sentence that contains all of these keywords?"),
    T("Combine the words {concepts} into one sentence."),
    T("Here are some concepts: {concepts}\n\nDescribe an everyday scene with them in one sentence."),
    T("What are the key concepts in this sentence?\n\n{answer}", "{concepts}", reverse=True),
    T("List the main words of the sentence: {answer}", "{concepts}", reverse=True),
]

TRIPLES = [
    T("Data: {data}\n\nWrite a sentence that describes this data."),
    T("Generate a sentence about this data: {data}"),
    T("Here are some facts: {data}\n\nExpress them in a single sentence."),
    T("Turn these triples into a sentence: {data}"),
    T("{data}\n\nWhat is a sentence that conveys this information?"),
    T("Describe the following data in words.\n\n{data}"),
    T("Triples: {data}\nSentence:"),
    T("Sentence: {answer}\n\nExtract the facts in this sentence as subject | predicate | object triples.", "{data}",
      reverse=True),
    T("What structured data can be extracted from this sentence?\n{answer}", "{data}", reverse=True),
]

E2E = [
    T("Attributes: {data}\n\nWrite a sentence describing this restaurant."),
    T("Produce a description of a restaurant with these properties: {data}"),
    T("{data}\n\nDescribe this restaurant in a sentence."),
    T("Write a sentence about a restaurant that uses all of this information: {data}"),
    T("Here is data about a restaurant: {data}\n\nWrite a sentence about it."),
    T("Meaning representation: {data}\nNatural language:"),
    T("Put this restaurant information into words: {data}"),
    T("Sentence: {answer}\n\nList the restaurant attributes this sentence mentions as name = value pairs.", "{data}",
      reverse=True),
    T("Extract the attributes of the restaurant described here: {answer}", "{data}", reverse=True),
]


def _triples(table: Features) -> tf.Tensor:
  """'s | p | o; s | p | o' from TFDS table cells (each triple is a subject, predicate, object row)."""
  sep = tf.where(tf.equal(table["column_header"], "subject"), "; ", " | ")
  text = tf.strings.reduce_join(tf.strings.join([sep, table["content"]]))
  return tf.strings.regex_replace(text, r"^(; | \| )", "")


def common_gen(ex: Features) -> Features:
  return {"concepts": tf.strings.reduce_join(ex["concepts"], separator=", "), "answer": ex["target"]}


def dart(ex: Features) -> Features:
  data = _triples(ex["input_text"]["table"])
  # Cells like "[TABLECONTEXT]" and "[TITLE]" name the table itself: "[TABLECONTEXT] | [TITLE] | Atlanta" -> "Atlanta".
  data = tf.strings.regex_replace(data, r"\[[A-Z_]+\]( \| )?", "")
  return {"data": data, "answer": ex["target_text"]}


def e2e(ex: Features) -> Features:
  table = ex["input_text"]["table"]
  pairs = tf.strings.join([table["column_header"], table["content"]], separator=" = ")
  return {"data": tf.strings.reduce_join(pairs, separator=", "), "answer": ex["target_text"]}


def web_nlg(ex: Features) -> Features:
  # Entities are DBpedia names: "Alan_Bean".
  data = tf.strings.regex_replace(_triples(ex["input_text"]["table"]), "_", " ")
  return {"data": data, "answer": ex["target_text"]}


def register_all() -> list[str]:
  # GEM's CommonGen test targets are hidden (empty; dropped): use train and validation.
  names = register("common_gen", CLUSTER, "gem/common_gen:1.1.0", TRAIN_VAL, COMMON_GEN, ("concepts",), common_gen)
  names += register("dart", CLUSTER, "dart:0.1.0", TRAIN_VAL_TEST, TRIPLES, ("data",), dart)
  names += register("e2e_nlg", CLUSTER, "e2e_cleaned:0.1.0", TRAIN_VAL_TEST, E2E, ("data",), e2e)
  names += register("web_nlg", CLUSTER, "web_nlg:0.1.0",
                    {"train": "train", "validation": "validation", "test": "test_all"}, TRIPLES, ("data",), web_nlg)
  return names


TASKS = register_all()
