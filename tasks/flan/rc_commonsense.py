"""Reading comprehension with commonsense: CosmosQA, ReCoRD.

FLAN's inter-cluster splits drop this cluster from training when reading
comprehension or commonsense is held out, and drop both of those when this
one is (flan/task_splits.py). The secondary clusters reproduce that under
itjax's held-out rule: CosmosQA is also listed under "reading_comp" and ReCoRD
under "commonsense", so holding out either of those excludes both datasets
(they share "rc_commonsense"), while holding out "rc_commonsense" excludes
all three clusters.
"""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TRAIN_VAL, Features, has_index, pick, register, with_answer

COSMOS_CLUSTERS = ("rc_commonsense", "reading_comp")
RECORD_CLUSTERS = ("rc_commonsense", "commonsense")
BLANK = "_____"

COSMOS_QA = [
    T("{context}\n\nQuestion: {question}"),
    T("{context}\n\nAnswer the question based on the text: {question}"),
    T("Read the passage and answer the question.\n\n{context}\n\n{question}"),
    T("{context}\n\n{question}\n\nPick the best answer."),
    T("Context: {context}\nQ: {question}"),
    T("Here is a short story: {context}\n\nUsing common sense, answer this question: {question}"),
    T("{question}\n\nRead this to find out: {context}"),
    T("{context}\n\nWrite a question about the text whose answer is \"{answer}\".", "{question}", reverse=True),
]

RECORD = [
    T("{passage}\n\nFill in the blank: {query}"),
    T("{passage}\n\nWhich entity best fills the blank in this sentence?\n{query}"),
    T("Read the article and complete the sentence.\n\n{passage}\n\n{query}"),
    T("Article: {passage}\n\nSentence: {query}\n\nWhat should go in the blank?"),
    T("{passage}\n\nWhat is the missing entity in \"{query}\"?"),
    T("Here is a news article: {passage}\n\nComplete this follow-up sentence: {query}"),
    T("{query}\n\nFind the entity missing from the sentence above in this article.\n\n{passage}"),
    T("{passage}\n\nWrite a sentence about this article that mentions {answer}.", "{filled}", reverse=True),
]


def cosmos_qa(ex: Features) -> Features:
  options = tf.stack([ex["answer0"], ex["answer1"], ex["answer2"], ex["answer3"]])
  return {"context": ex["context"], "question": ex["question"], "options": options,
          "answer": pick(options, ex["label"])}


def _literal(text: tf.Tensor) -> tf.Tensor:
  """`text` escaped for use as a regex_replace rewrite (backslashes are special there)."""
  return tf.strings.regex_replace(text, r"\\", r"\\\\")


def record(ex: Features) -> Features:
  """The query's "@placeholder" becomes a blank; options are the passage's entities."""
  answer = ex["answers"][0]
  # Highlights follow "@highlight" lines: keep them as a list.
  passage = tf.strings.regex_replace(ex["passage"], r"\s*@highlight\s*", "\n- ")
  return {"passage": passage, "query": tf.strings.regex_replace(ex["query"], "@placeholder", BLANK),
          "filled": tf.strings.regex_replace(ex["query"], "@placeholder", _literal(answer)),
          "options": with_answer(ex["entities"], answer), "answer": answer}


def register_all() -> list[str]:
  # Test labels are hidden (-1 / no answers).
  names = register("cosmos_qa", COSMOS_CLUSTERS, "cosmos_qa:1.0.0", TRAIN_VAL, COSMOS_QA, ("context", "question"),
                   cosmos_qa, keep=lambda ex: has_index(ex["label"], 4), has_options=True)
  names += register("record", RECORD_CLUSTERS, "super_glue/record:1.0.2", TRAIN_VAL, RECORD,
                    ("passage", "query", "filled"), record, keep=lambda ex: tf.size(ex["answers"]) > 0,
                    has_options=True)
  return names


TASKS = register_all()
