"""Procedural preference tasks for offline preference tuning and RLHF, where the better answer is known.

- `proc_pref_add`: "What is a + b?" pairs: the sum (chosen) against a wrong one (rejected).
- `proc_pref_words`: "Answer in at most N words" pairs: a list that keeps the limit against one that breaks it.
- `proc_pref_echo`: "Repeat the word: w" pairs: w against another word; the validation split holds the (word,
  other word) combinations never trained on. Small models learn it in seconds (the tests' learning checks).
- `proc_pref_add_ranked`: K = 4 ranked answers to the sum question (exact, off by 1, 3 and 10), for
  InstructGPT-style reward-model training on every pair of a ranking.

The train and validation splits draw different operands (train: a + b with a even, validation: a odd), so
validation prompts are never trained on. `proc_pref` mixes the three pair tasks, `proc_pref_rm` the echo
pairs with the rankings of sums (for a reward model), `proc_pref_verifiable` the tasks with one right answer
(for RL with an exact-match reward).
"""

from __future__ import annotations

import random

import seqio

from itjax.data.preference import PreferenceRow, PreferenceSource, register_preference_task

SEED = 4242
SIZES = {"train": 4_000, "validation": 64}
WORDS = ["apples", "pears", "plums", "figs", "limes", "kiwis", "dates", "grapes"]


def _operands(r: random.Random, split: str) -> tuple[int, int]:
  a = r.randrange(0, 50) * 2 + (split != "train")
  return a, r.randrange(0, 50)


def add_pair(r: random.Random, split: str) -> PreferenceRow:
  a, b = _operands(r, split)
  wrong = a + b + r.choice([-10, -3, -2, -1, 1, 2, 3, 10])
  return PreferenceRow(f"What is {a} + {b}?", (str(a + b), str(wrong)), (1, 2))


def words_pair(r: random.Random, split: str) -> PreferenceRow:
  n = r.randrange(1, 4) + (split != "train") * 3  # train: limits 1-3, validation: 4-6
  keep = r.sample(WORDS, n)
  over = keep + r.sample([w for w in WORDS if w not in keep], r.randrange(1, 3))
  return PreferenceRow(f"Name fruits in at most {n} words.", (" ".join(keep), " ".join(over)), (1, 2))


ECHO = ["cat", "dog", "sun", "tree", "book", "fish", "moon", "road", "lamp", "bird", "star", "rock"]


def echo_pair(r: random.Random, split: str) -> PreferenceRow:
  while True:
    i, j = r.sample(range(len(ECHO)), 2)
    if ((i + j) % 3 == 0) == (split != "train"):
      return PreferenceRow(f"Repeat the word: {ECHO[i]}", (ECHO[i], ECHO[j]), (1, 2))


def add_ranking(r: random.Random, split: str) -> PreferenceRow:
  a, b = _operands(r, split)
  offsets = [0, r.choice([-1, 1]), r.choice([-3, 3]), r.choice([-10, 10])]
  order = list(range(4))
  r.shuffle(order)  # responses in random order; ranks say which is best
  return PreferenceRow(f"What is {a} + {b}?", tuple(str(a + b + offsets[i]) for i in order),
                       tuple(i + 1 for i in order))


def _rows(make, name: str) -> dict[str, list[PreferenceRow]]:
  out = {}
  for split, n in SIZES.items():
    r = random.Random(f"{SEED}:{name}:{split}")
    out[split] = [make(r, split) for _ in range(n)]
  return out


def register() -> list[str]:
  names = [register_preference_task(f"proc_pref_{n}", PreferenceSource(rows=_rows(make, n), fmt=fmt))
           for n, make, fmt in (("add", add_pair, "pairs"), ("words", words_pair, "pairs"),
                                ("echo", echo_pair, "pairs"), ("add_ranked", add_ranking, "ranking"))]
  seqio.MixtureRegistry.remove("proc_pref")
  seqio.MixtureRegistry.add("proc_pref", [("proc_pref_add", 1.0), ("proc_pref_words", 1.0), ("proc_pref_echo", 1.0)])
  seqio.MixtureRegistry.remove("proc_pref_rm")  # the reward model's: pairs and rankings
  seqio.MixtureRegistry.add("proc_pref_rm", [("proc_pref_echo", 1.0), ("proc_pref_add_ranked", 0.25)])
  seqio.MixtureRegistry.remove("proc_pref_verifiable")  # prompts with one right answer (GRPO's exact match)
  seqio.MixtureRegistry.add("proc_pref_verifiable", [("proc_pref_add", 1.0), ("proc_pref_echo", 1.0)])
  return names + ["proc_pref", "proc_pref_rm", "proc_pref_verifiable"]


NAMES_REGISTERED = register()
