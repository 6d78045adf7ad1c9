"""FLAN's task clusters as TFDS-backed instruction tasks (import name: `itjax_tasks.flan`).

Importing registers `flan_<dataset>_<variant>` tasks for all 62 datasets of
FLAN's 12 clusters (Wei et al., 2021, "Finetuned Language Models Are Zero-Shot
Learners"), as 67 itjax datasets (ANLI rounds, ARC levels and SQuAD v1.1/v2.0
are separate datasets here, as in FLAN's code, which also lists SuperGLUE WSC
under coreference), plus `flan_heldout_<cluster>` mixtures. Nothing is read
until a task is used; the data must then be in the TFDS data directory
(prepared, or downloadable; Newsroom, SAMSum and StoryCloze need manual
downloads). Translation follows FLAN's code: ParaCrawl en-es, WMT'14 en-fr and
six WMT'16 pairs.

Clusters (primary first where a dataset is listed in several):
  nli             ANLI R1/R2/R3, CB, MNLI, QNLI, RTE, SNLI, WNLI
  commonsense     COPA, HellaSwag, PIQA, StoryCloze
  sentiment       IMDB, Sentiment140, SST-2, Yelp
  paraphrase      MRPC, QQP, PAWS-Wiki, STS-B                  (+ "nli")
  closed_book_qa  ARC-Easy, ARC-Challenge, Natural Questions, TriviaQA
  struct_to_text  CommonGen, DART, E2E NLG, WebNLG
  translation     ParaCrawl en-es, WMT'14 en-fr, WMT'16 en-cs/de/fi/ro/ru/tr
  reading_comp    BoolQ, DROP, MultiRC, OpenBookQA, SQuAD v1.1, SQuAD v2.0
  rc_commonsense  CosmosQA (+ "reading_comp"), ReCoRD (+ "commonsense")
  coreference     DPR, Winogrande, WSC273, SuperGLUE WSC
  summarization   AESLC, AG News, CNN/DailyMail, Gigaword, Multi-News, Newsroom,
                  Opinion Abstracts (Rotten Tomatoes, iDebate), SAMSum, WikiLingua, XSum
  misc            CoQA, QuAC, TREC, CoLA, WiC, Math, Fix Punctuation

The secondary clusters reproduce FLAN's special held-out rules
(flan/task_splits.py): holding out NLI also drops paraphrase from training and
vice versa; holding out reading comprehension or commonsense drops the
"reading comprehension with commonsense" datasets, and holding those out drops
both clusters. MNLI is one dataset (FLAN had matched and mismatched tasks on
the same training data): "validation" is validation_matched, and the extra
split "validation_mismatched" holds the other.

Splits: "validation" is the labeled TFDS dev split, or the labeled test split
where there is no dev split (IMDB, Sentiment140, Yelp, DPR, AG News, TREC,
CoQA, Math; StoryCloze, whose TFDS validation split is its training data), or
held-back training rows where TFDS has a train split only (ParaCrawl, Fix
Punctuation, Opinion Abstracts); "test" is mapped only where TFDS has labeled
test data besides (or, for ParaCrawl and Fix Punctuation, more held-back
rows). WSC273 has only a test split: its first 173 examples are "train", the
last 100 "validation" (every task needs a "train" split for mixture rates;
FLAN evaluated on all 273). TFDS versions are pinned to those of
tensorflow-datasets 4.9.10.

Skipped datasets: none. Every FLAN dataset is in TFDS 4.9.10 (CommonGen and
WikiLingua through the "gem" builder, which has no standalone counterparts).
Left out on purpose: FLAN's True Case and Word Segment (in its code's
"text_formatting" cluster, not among the paper's 62 datasets), and its
few-shot and rank-classification variants (itjax registers zero-shot variants
with and without options).
"""

from __future__ import annotations

from itjax.data.mixtures import register_heldout_mixtures

from . import (
  closed_book_qa,
  commonsense,
  coreference,
  misc,
  nli,
  paraphrase,
  rc_commonsense,
  reading_comp,
  sentiment,
  struct_to_text,
  summarization,
  translation,
)

MODULES = (nli, commonsense, sentiment, paraphrase, closed_book_qa, struct_to_text, translation, reading_comp,
           rc_commonsense, coreference, summarization, misc)
TASKS: list[str] = [name for module in MODULES for name in module.TASKS]
MIXTURES: list[str] = register_heldout_mixtures("flan", TASKS)
