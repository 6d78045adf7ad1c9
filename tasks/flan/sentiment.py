"""Sentiment: IMDB, Sentiment140, SST-2, Yelp polarity (options: negative / positive)."""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TEST_AS_VAL, TRAIN_VAL, Features, pick, register, register_labeled

CLUSTER = "sentiment"
OPTIONS = ("negative", "positive")

IMDB = [
    T("Review: {text}\n\nIs this movie review positive or negative?"),
    T("{text}\n\nWhat is the sentiment of this review?"),
    T("How does the reviewer feel about the movie?\n\n{text}"),
    T("Would you say this film review is positive or negative?\n\n{text}"),
    T("Classify the sentiment of this movie review: {text}"),
    T("{text}\n\nIs the reviewer's opinion of the film positive or negative?"),
    T("Determine whether the following movie review expresses a positive or a negative opinion.\n\n{text}"),
    T("Movie review: {text}\nSentiment:"),
    T("Write a {answer} movie review.", "{text}", reverse=True),
    T("Write a {answer} review of a film you have seen.", "{text}", reverse=True),
]

SENTIMENT140 = [
    T("Tweet: {text}\n\nIs the sentiment of this tweet positive or negative?"),
    T("{text}\n\nHow would you describe the sentiment of this tweet?"),
    T("What is the mood of this tweet? {text}"),
    T("Classify this tweet as positive or negative: {text}"),
    T("{text}\n\nDoes the author of this tweet feel positive or negative?"),
    T("Read the tweet and decide its sentiment.\n\n{text}"),
    T("Tweet: {text}\nSentiment:"),
    T("Write a {answer} tweet.", "{text}", reverse=True),
    T("Compose a tweet with a {answer} tone.", "{text}", reverse=True),
]

SST2 = [
    T("\"{text}\"\n\nIs the sentiment of this phrase from a movie review positive or negative?"),
    T("Review snippet: {text}\n\nDid the critic think positively or negatively of the movie?"),
    T("What is the sentiment of the following sentence from a film review?\n{text}"),
    T("{text}\n\nWould you call this remark positive or negative?"),
    T("Classify the sentiment: {text}"),
    T("Decide whether this movie review excerpt is positive or negative: {text}"),
    T("\"{text}\"\nHow does the writer feel about the movie?"),
    T("Write a {answer} sentence about a movie.", "{text}", reverse=True),
]

YELP = [
    T("Review: {text}\n\nIs this Yelp review positive or negative?"),
    T("{text}\n\nWhat is the sentiment of this review?"),
    T("How was the customer's experience, judging by this review?\n\n{text}"),
    T("Classify this business review by its sentiment: {text}"),
    T("Yelp review: {text}\nSentiment:"),
    T("Read this review and tell me whether it is positive or negative.\n\n{text}"),
    T("{text}\n\nWas the writer's experience positive or negative?"),
    T("Write a {answer} Yelp review.", "{text}", reverse=True),
    T("Write a {answer} review of a local business.", "{text}", reverse=True),
]


def sentiment140(ex: Features) -> Features:
  """Polarity 0 (negative) or 4 (positive); the neutral 2s of the test set are dropped."""
  options = tf.constant(OPTIONS)
  return {"text": ex["text"], "options": options, "answer": pick(options, tf.cast(ex["polarity"] > 2, tf.int32))}


def _imdb_text(ex: Features) -> tf.Tensor:
  return tf.strings.regex_replace(ex["text"], r"<br\s*/?>", "\n")


def _yelp_text(ex: Features) -> tf.Tensor:
  text = tf.strings.regex_replace(ex["text"], r"\\n", " ")
  return tf.strings.regex_replace(text, r'\\""', '"')


def register_all() -> list[str]:
  names = register_labeled("imdb", CLUSTER, "imdb_reviews/plain_text:1.0.0", TEST_AS_VAL, IMDB, label="label",
                           options=OPTIONS, fields={"text": _imdb_text})
  names += register("sentiment140", CLUSTER, "sentiment140:1.0.0", TEST_AS_VAL, SENTIMENT140, ("text",),
                    sentiment140, keep=lambda ex: tf.not_equal(ex["polarity"], 2), has_options=True)
  names += register_labeled("sst2", CLUSTER, "glue/sst2:2.0.0", TRAIN_VAL, SST2, label="label", options=OPTIONS,
                            fields={"text": "sentence"})
  names += register_labeled("yelp", CLUSTER, "yelp_polarity_reviews:0.2.0", TEST_AS_VAL, YELP, label="label",
                            options=OPTIONS, fields={"text": _yelp_text})
  return names


TASKS = register_all()
