"""Commonsense reasoning: COPA, HellaSwag, PIQA, StoryCloze (multiple choice; options are the choices)."""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TRAIN_VAL, Features, has_index, pick, register

CLUSTER = "commonsense"

COPA = [
    T("{premise}\n\nWhat was the {question} of this?"),
    T("Premise: {premise}\n{ask}"),
    T("Pick the more plausible {question} of the following event: \"{premise}\""),
    T("{premise} {ask}"),
    T("Choose the {question} of this event.\n\n{premise}"),
    T("Here is a premise: {premise}\n\n{ask}\n\nPick the most plausible alternative."),
    T("Which alternative is more likely the {question} of \"{premise}\"?"),
    T("Event: {premise}\nWhat is its {question}?"),
    T("Write an event whose {question} is the following: {answer}", "{premise}", reverse=True),
]

HELLASWAG = [
    T("{context}\n\nHow does the description most likely continue?"),
    T("What happens next?\n\n{context}"),
    T("Complete the following passage.\n\n{context}"),
    T("{context}\n\nWhich ending makes the most sense?"),
    T("Topic: {activity}\n\n{context}\n\nChoose the best continuation."),
    T("Continue writing the text: {context}"),
    T("{context}\n\nWhat is the most natural next sentence?"),
    T("Pick the most likely continuation of this text about {activity}.\n\n{context}"),
    T("Write the beginning of a text about \"{activity}\" that could be followed by: {answer}", "{context}",
      reverse=True),
]

PIQA = [
    T("Here is a goal: {goal}\n\nHow would you accomplish this goal?"),
    T("Goal: {goal}\n\nWhich is the better way to do it?"),
    T("How do you do this: {goal}"),
    T("Choose the right solution.\n\nGoal: {goal}"),
    T("{goal}\n\nPick the correct method."),
    T("I want to achieve the following: {goal}\nWhat should I do?"),
    T("Which method works for this task? {goal}"),
    T("Task: {goal}\nWhich solution is correct?"),
    T("Write a goal that can be accomplished like this: {answer}", "{goal}", reverse=True),
]

STORY_CLOZE = [
    T("{context}\n\nWhat is the most likely ending of the story?"),
    T("Read the story and choose the best ending.\n\n{context}"),
    T("Continue the story: {context}"),
    T("{context}\n\nWhich sentence ends this story best?"),
    T("Story: {context}\n\nHow does the story end?"),
    T("Here are four sentences of a story: {context}\n\nPick the fifth sentence."),
    T("Finish this short story.\n\n{context}"),
    T("{context}\n\nWhat happens next?"),
    T("Write a four-sentence story that ends with: {answer}", "{context}", reverse=True),
]


def copa(ex: Features) -> Features:
  options = tf.stack([ex["choice1"], ex["choice2"]])
  is_cause = tf.equal(ex["question"], "cause")
  ask = tf.where(is_cause, "What was the cause of this?", "What happened as a result?")
  return {"premise": ex["premise"], "question": ex["question"], "ask": ask, "options": options,
          "answer": pick(options, ex["label"])}


def _strip_tags(text: tf.Tensor) -> tf.Tensor:
  """HellaSwag's WikiHow rows carry "[header]"/"[step]" markers: drop them as FLAN does."""
  text = tf.strings.regex_replace(text, r"\[header\]\s*", "")
  return tf.strings.regex_replace(text, r"\s*\[[a-z]+\]\s*", "\n")


def hellaswag(ex: Features) -> Features:
  options = tf.strings.strip(tf.strings.regex_replace(ex["endings"], r"\[[a-z]+\]\s*", ""))
  return {"context": _strip_tags(ex["context"]), "activity": ex["activity_label"], "options": options,
          "answer": pick(options, ex["label"])}


def piqa(ex: Features) -> Features:
  options = tf.stack([ex["sol1"], ex["sol2"]])
  return {"goal": ex["goal"], "options": options, "answer": pick(options, ex["label"])}


def story_cloze(ex: Features) -> Features:
  # Labels are 1 or 2 (the right ending), -1 where unknown.
  return {"context": ex["context"], "options": ex["endings"], "answer": pick(ex["endings"], ex["label"] - 1)}


def register_all() -> list[str]:
  names = register("copa", CLUSTER, "super_glue/copa:1.0.2", TRAIN_VAL, COPA, ("premise", "question", "ask"), copa,
                   keep=lambda ex: has_index(ex["label"], 2), has_options=True)
  # The test split is unlabeled (-1).
  names += register("hellaswag", CLUSTER, "hellaswag:1.1.0", TRAIN_VAL, HELLASWAG, ("context", "activity"),
                    hellaswag, keep=lambda ex: has_index(ex["label"], tf.size(ex["endings"])), has_options=True)
  names += register("piqa", CLUSTER, "piqa:1.0.0", TRAIN_VAL, PIQA, ("goal",), piqa,
                    keep=lambda ex: has_index(ex["label"], 2), has_options=True)
  # TFDS has only the 2016 validation and test sets (manual download): train on validation, evaluate on test.
  names += register("story_cloze", CLUSTER, "story_cloze/2016:1.0.0", {"train": "validation", "validation": "test"},
                    STORY_CLOZE, ("context",), story_cloze,
                    keep=lambda ex: has_index(ex["label"] - 1, tf.size(ex["endings"])), has_options=True)
  return names


TASKS = register_all()
