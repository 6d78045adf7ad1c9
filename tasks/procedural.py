"""Procedurally generated instruction tasks for offline runs (no downloads).

Six clusters of three or four datasets each, small enough that a byte-level model
learns the seen ones in minutes on a CPU. Every dataset is deterministic by
seed; classification datasets carry answer options. Registered as
`proc_<dataset>_<variant>` (zero- and 2-shot, with and without options, and
chain-of-thought where a rationale is generated), with
zero-shot held-out mixtures `proc_heldout_<cluster>`.
"""

from __future__ import annotations

import random

from itjax.data.mixtures import register_heldout_mixtures
from itjax.data.sources import procedural_source
from itjax.data.tasks import register_instruction_task, task_info
from itjax.data.templates import ZERO_SHOT_NOOPT, ZERO_SHOT_OPT
from itjax.data.templates import Template as T

SEED = 1234
SIZES = {"train": 20_000, "validation": 64, "test": 64}
# Generated examples are already i.i.d.; a small buffer keeps start-up fast.
SHUFFLE_BUFFER = 256
NUM_SHOTS = 2
NAMES = ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Joe"]
COLORS = ["red", "blue", "green", "black", "white", "pink"]
THINGS = ["ball", "cup", "box", "hat", "car", "pen"]
FRUITS = ["apples", "pears", "plums", "figs", "limes"]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Cairo"]
WORDS = ["cat", "dog", "sun", "tree", "book", "fish", "moon", "road", "lamp", "bird", "star", "rock"]
GOOD = ["great", "wonderful", "lovely", "superb", "delightful", "excellent"]
BAD = ["awful", "terrible", "boring", "dreadful", "poor", "horrible"]
YES_NO = ["yes", "no"]
POS_NEG = ["positive", "negative"]


def _words(r: random.Random, n: int) -> list[str]:
  return [r.choice(WORDS) for _ in range(n)]


# --- arithmetic -------------------------------------------------------------
def add(r):
  a, b = r.randint(0, 20), r.randint(0, 20)
  return {"a": str(a), "b": str(b), "answer": str(a + b), "rationale": f"Adding {b} to {a} gives {a + b}."}


def subtract(r):
  a = r.randint(0, 30)
  b = r.randint(0, a)
  return {"a": str(a), "b": str(b), "answer": str(a - b), "rationale": f"Taking {b} away from {a} leaves {a - b}."}


def successor(r):
  a = r.randint(0, 98)
  return {"a": str(a), "answer": str(a + 1)}


# --- string transformation ---------------------------------------------------
def uppercase(r):
  w = " ".join(_words(r, r.randint(1, 3)))
  return {"text": w, "answer": w.upper()}


def reverse_word(r):
  w = r.choice(WORDS)
  return {"text": w, "answer": w[::-1]}


def first_word(r):
  ws = _words(r, r.randint(2, 5))
  return {"text": " ".join(ws), "answer": ws[0]}


# --- sentiment ----------------------------------------------------------------
def _review(r, subject: str):
  pos = r.random() < 0.5
  adj = r.choice(GOOD if pos else BAD)
  return {"text": f"The {subject} was {adj}.", "answer": POS_NEG[0 if pos else 1], "options": POS_NEG}


def movie_review(r):
  return _review(r, r.choice(["movie", "film", "plot", "acting"]))


def product_review(r):
  return _review(r, r.choice(["phone", "chair", "lamp", "blender"]))


def restaurant_review(r):
  return _review(r, r.choice(["soup", "service", "pasta", "dessert"]))


# --- natural language inference -------------------------------------------------
def color_nli(r):
  thing, c = r.choice(THINGS), r.choice(COLORS)
  same = r.random() < 0.5
  h = c if same else r.choice([x for x in COLORS if x != c])
  return {"premise": f"The {thing} is {c}.", "hypothesis": f"The {thing} is {h}.",
          "answer": YES_NO[0 if same else 1], "options": YES_NO}


def height_nli(r):
  a, b = r.sample(NAMES, 2)
  yes = r.random() < 0.5
  h = f"{b} is shorter than {a}." if yes else f"{b} is taller than {a}."
  return {"premise": f"{a} is taller than {b}.", "hypothesis": h, "answer": YES_NO[0 if yes else 1],
          "options": YES_NO}


def count_nli(r):
  n, k = r.randint(1, 9), r.randint(1, 9)
  thing = r.choice(["dogs", "cats", "birds"])
  return {"premise": f"There are {n} {thing}.", "hypothesis": f"There are more than {k} {thing}.",
          "answer": YES_NO[0 if n > k else 1], "options": YES_NO}


# --- reading comprehension (options: the candidate answers in the text) ----------
def _shuffled(r: random.Random, options: set[str]) -> list[str]:
  out = sorted(options)
  r.shuffle(out)
  return out


def fruit_count(r):
  a, b = r.sample(NAMES, 2)
  fa, fb = r.sample(FRUITS, 2)
  na, nb = r.randint(1, 9), r.randint(1, 9)
  ask_a = r.random() < 0.5
  return {"context": f"{a} has {na} {fa}. {b} has {nb} {fb}.",
          "question": f"How many {fa if ask_a else fb} does {a if ask_a else b} have?",
          "answer": str(na if ask_a else nb), "options": _shuffled(r, {str(na), str(nb)})}


def thing_color(r):
  t1, t2 = r.sample(THINGS, 2)
  c1, c2 = r.sample(COLORS, 2)
  ask1 = r.random() < 0.5
  return {"context": f"The {t1} is {c1}. The {t2} is {c2}.", "question": f"What color is the {t1 if ask1 else t2}?",
          "answer": c1 if ask1 else c2, "options": _shuffled(r, {c1, c2})}


def home_city(r):
  a, b = r.sample(NAMES, 2)
  ca, cb = r.sample(CITIES, 2)
  ask_a = r.random() < 0.5
  return {"context": f"{a} lives in {ca}. {b} lives in {cb}.", "question": f"Where does {a if ask_a else b} live?",
          "answer": ca if ask_a else cb, "options": _shuffled(r, {ca, cb})}


def lives_in(r):
  a, b = r.sample(NAMES, 2)
  ca, cb = r.sample(CITIES, 2)
  who, city = r.choice([(a, ca), (b, cb), (a, cb), (b, ca)])
  yes = (who, city) in ((a, ca), (b, cb))
  return {"context": f"{a} lives in {ca}. {b} lives in {cb}.", "question": f"Does {who} live in {city}?",
          "answer": YES_NO[0 if yes else 1], "options": YES_NO}


# --- list operations -------------------------------------------------------------
def _numbers(r):
  return [r.randint(0, 9) for _ in range(r.randint(3, 6))]


def list_max(r):
  xs = _numbers(r)
  return {"items": " ".join(map(str, xs)), "answer": str(max(xs)),
          "rationale": f"In order the numbers are {' '.join(map(str, sorted(xs)))}; the last is {max(xs)}."}


def list_min(r):
  xs = _numbers(r)
  return {"items": " ".join(map(str, xs)), "answer": str(min(xs)),
          "rationale": f"In order the numbers are {' '.join(map(str, sorted(xs)))}; the first is {min(xs)}."}


def list_length(r):
  ws = _words(r, r.randint(1, 7))
  return {"items": ", ".join(ws), "answer": str(len(ws))}


ARITH = [T("What is {a} + {b}?"), T("Add {a} and {b}."), T("Compute the sum of {a} and {b}.")]
SUB = [T("What is {a} - {b}?"), T("Subtract {b} from {a}."), T("Compute {a} minus {b}.")]
SUCC = [T("What number comes after {a}?"), T("Add one to {a}."), T("Count up by one from {a}.")]
UPPER = [T("Convert to uppercase: {text}"), T("Write this in capital letters: {text}"), T("Shout it: {text}")]
REV = [T("Reverse the word: {text}"), T("Spell {text} backwards."), T("Write the letters of {text} in reverse.")]
FIRST = [T("What is the first word of: {text}"), T("Text: {text}\nFirst word?"),
         T("Repeat only the first word: {text}")]
SENT = [T("Review: {text}\nIs this review positive or negative?"), T("{text}\nWhat is the sentiment?"),
        T("How does the writer feel? {text}"), T("Write a {answer} review.", "{text}", reverse=True)]
NLI = [T("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?"),
       T("{premise} Based on that, is it true that {hypothesis}"),
       T("If {premise} then is it the case that {hypothesis}")]
RC = [T("{context}\nQuestion: {question}"), T("Read: {context}\nAnswer: {question}"),
      T("Answer the question from the text.\nText: {context}\nQuestion: {question}")]
LIST = {"max": [T("What is the largest number in: {items}"), T("Numbers: {items}\nMaximum?"),
                T("Pick the biggest of {items}")],
        "min": [T("What is the smallest number in: {items}"), T("Numbers: {items}\nMinimum?"),
                T("Pick the smallest of {items}")],
        "len": [T("How many items are in the list: {items}"), T("Count the items: {items}"),
                T("List: {items}\nNumber of items?")]}

# dataset -> (cluster, generator, fields, templates)
DATASETS = {
    "add": ("arithmetic", add, ("a", "b", "rationale"), ARITH),
    "subtract": ("arithmetic", subtract, ("a", "b", "rationale"), SUB),
    "successor": ("arithmetic", successor, ("a",), SUCC),
    "uppercase": ("string", uppercase, ("text",), UPPER),
    "reverse_word": ("string", reverse_word, ("text",), REV),
    "first_word": ("string", first_word, ("text",), FIRST),
    "movie_review": ("sentiment", movie_review, ("text",), SENT),
    "product_review": ("sentiment", product_review, ("text",), SENT),
    "restaurant_review": ("sentiment", restaurant_review, ("text",), SENT),
    "color_nli": ("nli", color_nli, ("premise", "hypothesis"), NLI),
    "height_nli": ("nli", height_nli, ("premise", "hypothesis"), NLI),
    "count_nli": ("nli", count_nli, ("premise", "hypothesis"), NLI),
    "fruit_count": ("reading_comp", fruit_count, ("context", "question"), RC),
    "thing_color": ("reading_comp", thing_color, ("context", "question"), RC),
    "home_city": ("reading_comp", home_city, ("context", "question"), RC),
    "lives_in": ("reading_comp", lives_in, ("context", "question"), RC),
    "list_max": ("list_ops", list_max, ("items", "rationale"), LIST["max"]),
    "list_min": ("list_ops", list_min, ("items", "rationale"), LIST["min"]),
    "list_length": ("list_ops", list_length, ("items",), LIST["len"]),
}
OPTION_CLUSTERS = {"sentiment", "nli", "reading_comp"}


def register() -> list[str]:
  names = []
  for i, (dataset, (cluster, gen, fields, templates)) in enumerate(DATASETS.items()):
    source = procedural_source(gen, fields, SIZES, seed=SEED + i)
    names += register_instruction_task(f"proc_{dataset}", cluster, source, templates, fields=fields,
                                       has_options=cluster in OPTION_CLUSTERS, shuffle_buffer_size=SHUFFLE_BUFFER,
                                       num_shots=NUM_SHOTS)
  # The held-out mixtures are plain zero-shot (with and without options): few-shot prompts are 3x longer and
  # chain-of-thought targets 5x, too slow for the CPU default. The other variants are tasks of their own.
  zero_shot = (ZERO_SHOT_OPT, ZERO_SHOT_NOOPT)
  return names + register_heldout_mixtures("proc", [n for n in names if task_info(n).variant in zero_shot])


NAMES_REGISTERED = register()
