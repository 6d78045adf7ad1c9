"""Summarization: AESLC, AG News, CNN/DailyMail, Gigaword, Multi-News, Newsroom, Opinion Abstracts (Rotten
Tomatoes, iDebate), SAMSum, WikiLingua (English, from GEM), XSum.

AG News is topic classification; FLAN lists it in this cluster, and so do we.
Newsroom and SAMSum need a manual download: they are registered all the same and
load once their files are in the TFDS manual directory.
"""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import TEST_AS_VAL, TRAIN_VAL_TEST, Convert, Features, numbered, register, register_labeled

CLUSTER = "summarization"
AG_NEWS = ("World", "Sports", "Business", "Science/Tech")
# Opinion Abstracts has only a train split: evaluate on held-back rows.
OPINION_SPLITS = {"train": "train[:-500]", "validation": "train[-500:]"}
MAX_OPINIONS = 10

AESLC = [
    T("{body}\n\nWrite a subject line for this email."),
    T("Email: {body}\n\nWhat is a good subject line for it?"),
    T("Here is an email: {body}\n\nSuggest a subject for it."),
    T("Generate a subject line for the following message.\n\n{body}"),
    T("{body}\n\nSubject:"),
    T("What would be an appropriate subject for this email?\n{body}"),
    T("Summarize this email in a few words for its subject line: {body}"),
    T("Write an email with the subject line \"{answer}\".", "{body}", reverse=True),
    T("Subject: {answer}\n\nWrite the body of this email.", "{body}", reverse=True),
]

AG_NEWS_TEMPLATES = [
    T("{title}\n\n{text}\n\nWhat is this text about?"),
    T("Which topic is this article about?\n\n{text}"),
    T("Headline: {title}\nArticle: {text}\n\nWhich section of a newspaper does this belong in?"),
    T("Classify the topic of this news story: {text}"),
    T("{text}\n\nIs this a piece of news about world politics, sports, business, or science and technology?"),
    T("News: {title}. {text}\nTopic:"),
    T("Choose the category that best describes the article.\n\n{title}\n{text}"),
    T("Write a short {answer} news article.", "{text}", reverse=True),
    T("Write a headline for a {answer} news story.", "{title}", reverse=True),
]

NEWS = [
    T("{text}\n\nWrite a summary of this article."),
    T("Article: {text}\n\nSummarize the article."),
    T("Summarize this news story:\n\n{text}"),
    T("{text}\n\nWhat are the main points of this article?"),
    T("Here is a news article: {text}\n\nGive a short summary."),
    T("Read the article and sum up its key points.\n\n{text}"),
    T("{text}\nTL;DR:"),
    T("Write a news article based on this summary:\n\n{answer}", "{text}", reverse=True),
    T("Summary: {answer}\n\nWrite an article that covers this.", "{text}", reverse=True),
]

CNN_DAILYMAIL = [
    T("{text}\n\nWrite highlights for this article."),
    T("Article: {text}\n\nWhat are the highlights of this article?"),
    T("Summarize the main points of this news story:\n\n{text}"),
    T("{text}\n\nList the key facts of the article above."),
    T("Here is a news article: {text}\n\nWrite a few sentences that highlight its content."),
    T("Read the article and write its highlights.\n\n{text}"),
    T("{text}\nHighlights:"),
    T("Write a news article based on these highlights:\n\n{answer}", "{text}", reverse=True),
    T("Highlights:\n{answer}\n\nWrite an article that covers these points.", "{text}", reverse=True),
]

XSUM = [
    T("{text}\n\nSummarize this article in one sentence."),
    T("Article: {text}\n\nWhat is a one-sentence summary of the article?"),
    T("Write a single-sentence summary of this news story.\n\n{text}"),
    T("{text}\n\nWhat is this article about, in one sentence?"),
    T("Here is a news article: {text}\n\nSum it up in one sentence."),
    T("Give a one-line summary of the following text.\n\n{text}"),
    T("{text}\nOne-sentence summary:"),
    T("Write an article that can be summarized as follows: {answer}", "{text}", reverse=True),
    T("Summary: {answer}\n\nWrite the news story this sentence summarizes.", "{text}", reverse=True),
]

MULTI_NEWS = [
    T("{text}\n\nWrite a summary of these news articles."),
    T("Articles: {text}\n\nSummarize the news reported by these articles."),
    T("Summarize the following news articles into one text:\n\n{text}"),
    T("{text}\n\nWhat are the main points these articles share?"),
    T("Here are several news articles on the same story: {text}\n\nWrite a summary of the story."),
    T("Read the articles and write a single summary.\n\n{text}"),
    T("{text}\nSummary:"),
    T("Write a few news articles that this summary could be based on:\n\n{answer}", "{text}", reverse=True),
]

NEWSROOM = [
    T("{title}\n\n{text}\n\nWrite a summary of this article."),
    T("Article: {text}\n\nSummarize the article."),
    T("Summarize this news story titled \"{title}\".\n\n{text}"),
    T("{text}\n\nWhat is a short summary of the article above?"),
    T("Here is a news article: {text}\n\nGive a brief summary."),
    T("Title: {title}\n{text}\n\nSummary:"),
    T("Read the article and sum it up.\n\n{text}"),
    T("Write an article titled \"{title}\" based on this summary: {answer}", "{text}", reverse=True),
    T("{text}\n\nWrite a title for this article.", "{title}", reverse=True),
]

GIGAWORD = [
    T("{text}\n\nWrite a headline for this sentence."),
    T("Summarize this sentence in a few words: {text}"),
    T("{text}\n\nWhat is a very short summary of the above text?"),
    T("Generate a headline: {text}"),
    T("Shorten this to a headline.\n\n{text}"),
    T("Text: {text}\nHeadline:"),
    T("What is the gist of this news sentence? {text}"),
    T("Write a sentence based on this summary: {answer}", "{text}", reverse=True),
    T("Headline: {answer}\n\nWrite the opening sentence of the news story.", "{text}", reverse=True),
]

ROTTEN_TOMATOES = [
    T("Movie: {movie}\n\nReviews:\n{reviews}\n\nWrite a one-sentence critic consensus for this movie."),
    T("{reviews}\n\nSummarize these reviews of {movie}."),
    T("Here are some critic reviews of the movie {movie}:\n{reviews}\n\nWhat is the overall consensus?"),
    T("What do critics think of {movie}? Here are their reviews:\n{reviews}"),
    T("Write a short summary of the critics' opinions.\n\n{reviews}"),
    T("Reviews of {movie}:\n{reviews}\n\nConsensus:"),
    T("Write a review of {movie} that agrees with this critic consensus: {answer}", "{first_review}",
      reverse=True),
]

IDEBATE = [
    T("Debate topic: {debate}\n\nArgument:\n{arguments}\n\nWhat claim does this argument support?"),
    T("{arguments}\n\nSummarize the argument above in one sentence."),
    T("Here is an argument from a debate about \"{debate}\":\n{arguments}\n\nWhat is its main claim?"),
    T("Write a one-sentence claim that sums up this argument.\n\n{arguments}"),
    T("Topic: {debate}\nArgument:\n{arguments}\nClaim:"),
    T("Read this argument from the debate \"{debate}\" and state the claim it makes.\n\n{arguments}"),
    T("What is the main point of the following argument?\n{arguments}"),
    T("Write an argument for the claim \"{answer}\" in the debate \"{debate}\".", "{arguments}", reverse=True),
]

SAMSUM = [
    T("{dialogue}\n\nBriefly summarize this dialogue."),
    T("Dialogue:\n{dialogue}\n\nWhat were they talking about?"),
    T("Summarize this conversation:\n\n{dialogue}"),
    T("{dialogue}\n\nWrite a short summary of the chat above."),
    T("Here is a chat:\n{dialogue}\n\nWhat happened in it?"),
    T("Conversation:\n{dialogue}\nSummary:"),
    T("Read the dialogue and give a one-sentence summary.\n\n{dialogue}"),
    T("Write a dialogue that matches this summary: {answer}", "{dialogue}", reverse=True),
    T("Summary: {answer}\n\nWrite a chat conversation that this could be the summary of.", "{dialogue}",
      reverse=True),
]

WIKI_LINGUA = [
    T("{text}\n\nSummarize this how-to article."),
    T("Article: {text}\n\nWhat is a summary of these instructions?"),
    T("Summarize the following steps in a few sentences.\n\n{text}"),
    T("{text}\n\nWhat are the main steps described above?"),
    T("Here is a how-to guide: {text}\n\nWrite a short summary."),
    T("Read the instructions and sum them up.\n\n{text}"),
    T("{text}\nSummary:"),
    T("Write a how-to article based on this summary: {answer}", "{text}", reverse=True),
]


def _text_summary(text: str, summary: str) -> Convert:
  return lambda ex: {"text": ex[text], "answer": ex[summary]}


def aeslc(ex: Features) -> Features:
  return {"body": ex["email_body"], "answer": tf.strings.regex_replace(ex["subject_line"], r"\s+", " ")}


def cnn_dailymail(ex: Features) -> Features:
  # Drop the "(CNN) --" style dateline before the article text, as FLAN does.
  article = tf.strings.regex_replace(ex["article"], r"(?s)^.{0,160}?\(CNN\)\s*--", "", replace_global=False)
  return {"text": article, "answer": ex["highlights"]}


def multi_news(ex: Features) -> Features:
  # Source articles are separated by "|||||".
  text = tf.strings.regex_replace(ex["document"], r"\s*\|\|\|\|\|\s*", "\n\n")
  return {"text": text, "answer": ex["summary"]}


def newsroom(ex: Features) -> Features:
  return {"text": ex["text"], "title": ex["title"], "answer": ex["summary"]}


def _opinions(values: tf.Tensor) -> tf.Tensor:
  return numbered(values[:MAX_OPINIONS])


def rotten_tomatoes(ex: Features) -> Features:
  critics = ex["_critics"]["value"]
  return {"movie": tf.strings.regex_replace(ex["_movie_name"], "_", " "), "reviews": _opinions(critics),
          "first_review": critics[0], "answer": ex["_critic_consensus"]}


def idebate(ex: Features) -> Features:
  return {"debate": ex["_debate_name"], "arguments": _opinions(ex["_argument_sentences"]["value"]),
          "answer": ex["_claim"]}


def samsum(ex: Features) -> Features:
  return {"dialogue": tf.strings.regex_replace(ex["dialogue"], "\r\n", "\n"), "answer": ex["summary"]}


def _no_placeholders(ex: Features) -> tf.Tensor:
  """Gigaword masks rare words as UNK and digits as #: FLAN drops those rows."""
  text = tf.strings.join([ex["document"], ex["summary"]], separator=" ")
  return tf.logical_not(tf.strings.regex_full_match(text, r"(?s).*(\bUNK\b|#).*"))


def register_all() -> list[str]:
  names = register("aeslc", CLUSTER, "aeslc:1.0.0", TRAIN_VAL_TEST, AESLC, ("body",), aeslc)
  names += register_labeled("ag_news", CLUSTER, "ag_news_subset:1.0.0", TEST_AS_VAL, AG_NEWS_TEMPLATES,
                            label="label", options=AG_NEWS, fields={"title": "title", "text": "description"})
  names += register("cnn_dailymail", CLUSTER, "cnn_dailymail:3.4.0", TRAIN_VAL_TEST, CNN_DAILYMAIL, ("text",),
                    cnn_dailymail)
  names += register("gigaword", CLUSTER, "gigaword:1.2.0", TRAIN_VAL_TEST, GIGAWORD, ("text",),
                    _text_summary("document", "summary"), keep=_no_placeholders)
  names += register("multi_news", CLUSTER, "multi_news:2.1.0", TRAIN_VAL_TEST, MULTI_NEWS, ("text",), multi_news)
  names += register("newsroom", CLUSTER, "newsroom:1.0.0", TRAIN_VAL_TEST, NEWSROOM, ("text", "title"), newsroom)
  names += register("opinion_abstracts_rotten_tomatoes", CLUSTER, "opinion_abstracts/rotten_tomatoes:1.0.0",
                    OPINION_SPLITS, ROTTEN_TOMATOES, ("movie", "reviews", "first_review"), rotten_tomatoes,
                    keep=lambda ex: tf.size(ex["_critics"]["value"]) > 0)
  names += register("opinion_abstracts_idebate", CLUSTER, "opinion_abstracts/idebate:1.0.0", OPINION_SPLITS, IDEBATE,
                    ("debate", "arguments"), idebate)
  names += register("samsum", CLUSTER, "samsum:1.0.0", TRAIN_VAL_TEST, SAMSUM, ("dialogue",), samsum)
  names += register("wiki_lingua", CLUSTER, "gem/wiki_lingua_english_en:1.1.0", TRAIN_VAL_TEST, WIKI_LINGUA,
                    ("text",), _text_summary("source", "target"))
  names += register("xsum", CLUSTER, "xsum:1.1.0", TRAIN_VAL_TEST, XSUM, ("text",),
                    _text_summary("document", "summary"))
  return names


TASKS = register_all()
