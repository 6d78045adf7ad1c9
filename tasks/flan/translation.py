"""Translation: ParaCrawl en-es, WMT'14 en-fr, WMT'16 en-{cs,de,fi,ro,ru,tr} (FLAN's eight pairs).

Each pair is one dataset whose forward templates translate English into the
other language (the answer); its turned-around templates translate back into
English, as FLAN's templates for each pair go both ways.
"""

from __future__ import annotations

import tensorflow as tf

from itjax.data.templates import Template as T

from ._common import CARVED, TRAIN_VAL_TEST, Convert, Features, register

CLUSTER = "translation"

TEMPLATES = [
    T("Translate to {language}:\n\n{english}"),
    T("{english}\n\nTranslate this sentence to {language}."),
    T("How is \"{english}\" said in {language}?"),
    T("Translate the following English text into {language}.\n\n{english}"),
    T("English: {english}\n{language}:"),
    T("Write the sentence \"{english}\" in {language}."),
    T("{english}\n\nCan you translate that into {language}?"),
    T("Translate to English:\n\n{answer}", "{english}", reverse=True),
    T("{answer}\n\nWhat does this mean in English?", "{english}", reverse=True),
    T("How do you say this sentence in English?\n\n{answer}", "{english}", reverse=True),
]

LANGUAGES = {"cs": "Czech", "de": "German", "es": "Spanish", "fi": "Finnish", "fr": "French", "ro": "Romanian",
             "ru": "Russian", "tr": "Turkish"}
# dataset -> (TFDS name, language code, splits). ParaCrawl has only a train split: evaluate on held-back rows.
PAIRS = {
    "para_crawl_enes": ("para_crawl/enes:1.2.0", "es", CARVED),
    "wmt14_enfr": ("wmt14_translate/fr-en:1.0.0", "fr", TRAIN_VAL_TEST),
    **{f"wmt16_en{code}": (f"wmt16_translate/{code}-en:1.0.0", code, TRAIN_VAL_TEST)
       for code in ("cs", "de", "fi", "ro", "ru", "tr")},
}


def converter(code: str) -> Convert:
  language = LANGUAGES[code]

  def convert(ex: Features) -> Features:
    return {"english": ex["en"], "language": tf.constant(language), "answer": ex[code]}

  return convert


def register_all() -> list[str]:
  names = []
  for dataset, (tfds_name, code, splits) in PAIRS.items():
    names += register(dataset, CLUSTER, tfds_name, splits, TEMPLATES, ("english", "language"), converter(code))
  return names


TASKS = register_all()
