"""Your own mixture from JSONL files: P3's pre-templated files as held-out-cluster tasks.

Each `<dataset>_<template>.jsonl` file holds one dataset rendered through one prompt template
({"prompt", "completion"} lines). The files of one dataset are registered as its templates
(`register_pretemplated_dataset`), sliced 80/10/10 into train/validation/test by passage, so that no
passage is on two sides; classification datasets get answer options (each template's own labels,
from its training answers) for rank classification; prompts cut to the inputs length keep both ends
(instruction and question survive, the passage loses its middle); summarization is scored by ROUGE and
extractive QA by SQuAD F1. Then one held-out mixture per cluster.

    itjax tasks list p3_ --tasks_module=gin_configs/examples/p3_tasks.py

The data directory is $P3_DIR (default: ../shared/data/p3_templated beside the checkout).
"""

import json
import os

from itjax.data.jsonl import END_OF_TEXT
from itjax.data.mixtures import register_heldout_mixtures
from itjax.data.pretemplated import group_files, register_pretemplated_dataset

DATA_DIR = os.environ.get("P3_DIR", os.path.join(os.path.dirname(__file__), "../../../shared/data/p3_templated"))
# dataset -> (cluster, has answer options, metrics)
DATASETS = {
    "amazon_polarity": ("sentiment", True, ()), "app_reviews": ("sentiment", False, ()),
    "imdb": ("sentiment", True, ()), "rotten_tomatoes": ("sentiment", True, ()),
    "yelp_review_full": ("sentiment", True, ()),
    "adversarial_qa_dbert": ("extractive_qa", False, ("squad_f1", "squad_exact_match")),
    "adversarial_qa_dbidaf": ("extractive_qa", False, ("squad_f1", "squad_exact_match")),
    "adversarial_qa_droberta": ("extractive_qa", False, ("squad_f1", "squad_exact_match")),
    "quoref": ("extractive_qa", False, ("squad_f1", "squad_exact_match")),
    "ropes": ("extractive_qa", False, ("squad_f1", "squad_exact_match")),
    "duorc_SelfRC": ("extractive_qa", False, ("squad_f1", "squad_exact_match")),
    "duorc_ParaphraseRC": ("extractive_qa", False, ("squad_f1", "squad_exact_match")),
    "cnn_dailymail_3_0_0": ("summarization", False, ("rouge",)), "gigaword": ("summarization", False, ("rouge",)),
    "multi_news": ("summarization", False, ("rouge",)), "samsum": ("summarization", False, ("rouge",)),
    "xsum": ("summarization", False, ("rouge",)),
    "ag_news": ("topic", True, ()), "dbpedia_14": ("topic", True, ()),
}
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}



def label_templates(files: dict[str, str]) -> dict[str, str | None]:
  """Per template: "from_answers" where its answers are a label set (2 to 20 distinct), else None (generative
  templates of a classification dataset, e.g. "write a review with this rating")."""
  out = {}
  for template, path in files.items():
    with open(path) as f:
      answers = {json.loads(line)["completion"].removesuffix(END_OF_TEXT).strip() for line in f if line.strip()}
    out[template] = "from_answers" if 2 <= len(answers - {""}) <= 20 else None
  return out


names = []
if os.path.isdir(DATA_DIR):
  by_dataset = group_files(DATA_DIR, [*DATASETS, "trec"], unmatched="ignore")  # trec's files carry no labels
  for dataset, (cluster, has_options, metrics) in DATASETS.items():
    files = by_dataset.get(dataset)
    if files:
      names += register_pretemplated_dataset(
          f"p3_{dataset}", files, cluster=cluster, splits=SPLITS, truncation="keep_both_ends", metrics=metrics,
          options=label_templates(files) if has_options else None, on_error="skip")
  register_heldout_mixtures("p3", names)
