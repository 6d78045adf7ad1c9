"""Verifiable instruction-following checks in the style of IFEval (Zhou et al. 2023).

Each instruction id (e.g. "length_constraints:number_words") maps to a checker `fn(response, **kwargs) -> bool`
that follows google-research `instruction_following_eval` (ids, kwargs names and check logic), so IFEval's
input_data.jsonl rows evaluate as they are. `Instruction(id, kwargs).check(response)` is the strict check,
`.check_loose(response)` the loose one; `evaluate(examples)` gives IFEval's four accuracies plus per-id accuracy.

Deviations from the reference, all because its helpers need downloads or packages not installed here:
- Language (language:response_language, change_case:english_*): no langdetect. "English" means every letter is an
  ASCII letter; another language means most letters are in that language's Unicode script. Latin-script languages
  (es, fr, de, ...) therefore cannot be told apart from English or each other: for those the check is an upper bound.
- Sentences are counted with NLTK's Punkt with a short built-in abbreviation list instead of the trained English
  model (nltk data is not downloaded), so unusual abbreviations may split sentences differently.
- Capital words are tokenized with NLTK's word tokenizer on the whole text (no Punkt sentence split first).
- Keywords, section splitters and markers are matched literally (IFEval puts them into regexes unescaped, which is
  the same for the plain words its data uses).
- Relations accept "at most" besides IFEval's "less than" and "at least".
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import operator
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from itjax.errors import UserError

Checker = Callable[..., bool]
INSTRUCTIONS: dict[str, Checker] = {}

_RELATIONS = {"less than": operator.lt, "at least": operator.ge, "at most": operator.le}
_CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
# Abbreviations Punkt must not end a sentence on (the trained English model knows these and more).
_ABBREVIATIONS = ("dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "inc", "ltd", "co", "vs", "etc", "e.g", "i.e",
                  "u.s", "u.k", "a.m", "p.m", "ph.d", "no", "fig", "approx")
# Unicode-name prefixes of each IFEval language's script (see the module docstring for the simplification).
_SCRIPTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("en", "es", "pt", "fr", "de", "it", "pl", "vi", "sw", "fi"), ("LATIN",)),
    **dict.fromkeys(("ru", "uk", "bg"), ("CYRILLIC",)),
    **dict.fromkeys(("ar", "fa", "ur"), ("ARABIC",)),
    **dict.fromkeys(("hi", "mr", "ne"), ("DEVANAGARI",)),
    "bn": ("BENGALI",), "th": ("THAI",), "ta": ("TAMIL",), "te": ("TELUGU",), "kn": ("KANNADA",),
    "gu": ("GUJARATI",), "pa": ("GURMUKHI",), "ml": ("MALAYALAM",), "he": ("HEBREW",), "ko": ("HANGUL",),
    "ja": ("HIRAGANA", "KATAKANA", "CJK"),
}


def _register(instruction_id: str) -> Callable[[Checker], Checker]:
  """Adds a checker to INSTRUCTIONS under its IFEval id."""
  def deco(fn: Checker) -> Checker:
    INSTRUCTIONS[instruction_id] = fn
    return fn
  return deco


def _compare(count: int, relation: str, threshold: int) -> bool:
  """`count <relation> threshold` for the IFEval relation strings."""
  if relation not in _RELATIONS:
    raise UserError(f"relation must be one of {sorted(_RELATIONS)}, got {relation!r}")
  return _RELATIONS[relation](count, threshold)


# --- text helpers ----------------------------------------------------------------------------------------------------


@functools.cache
def _sentence_tokenizer():
  """Untrained Punkt plus common abbreviations: the trained English model needs an nltk data download."""
  from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

  params = PunktParameters()
  params.abbrev_types = set(_ABBREVIATIONS)
  return PunktSentenceTokenizer(params)


def count_sentences(text: str) -> int:
  """Number of sentences as Punkt splits them."""
  return len(_sentence_tokenizer().tokenize(text))


def count_words(text: str) -> int:
  """Number of \\w+ runs, as IFEval's RegexpTokenizer(r"\\w+")."""
  return len(re.findall(r"\w+", text))


def _letters(text: str) -> list[str]:
  return [ch for ch in text if ch.isalpha()]


def is_english(text: str) -> bool:
  """Simplified English test: every letter is an ASCII letter (text without letters passes, as IFEval's fallback)."""
  return all(ch.isascii() for ch in _letters(text))


def _in_language(text: str, language: str) -> bool:
  """English: is_english; otherwise most letters are in the language's script (see module docstring)."""
  if language not in _SCRIPTS:
    raise UserError(f"unsupported response language {language!r}; supported: {', '.join(sorted(_SCRIPTS))}")
  if language == "en":
    return is_english(text)
  letters = _letters(text)
  if not letters:
    return True
  prefixes = _SCRIPTS[language]
  in_script = sum(unicodedata.name(ch, "").startswith(prefixes) for ch in letters)
  return in_script > len(letters) / 2


# --- keywords --------------------------------------------------------------------------------------------------------


@_register("keywords:existence")
def _keywords_existence(response: str, *, keywords: Sequence[str]) -> bool:
  """Every keyword appears (case-insensitive, substring)."""
  return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


@_register("keywords:frequency")
def _keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
  """The keyword's case-insensitive occurrence count compares to `frequency`."""
  count = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
  return _compare(count, relation, frequency)


@_register("keywords:forbidden_words")
def _forbidden_words(response: str, *, forbidden_words: Sequence[str]) -> bool:
  """No forbidden word appears as a whole word (case-insensitive)."""
  return not any(re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE) for w in forbidden_words)


@_register("keywords:letter_frequency")
def _letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
  """The letter's case-insensitive count compares to `let_frequency`."""
  letter = letter.strip().lower()
  if len(letter) != 1:
    raise UserError(f"keywords:letter_frequency needs a single letter, got {letter!r}")
  return _compare(Counter(response.lower())[letter], let_relation, let_frequency)


# --- language and case -----------------------------------------------------------------------------------------------


@_register("language:response_language")
def _response_language(response: str, *, language: str) -> bool:
  """The whole response is in `language` (simplified, see module docstring)."""
  return _in_language(response, language)


@_register("change_case:english_capital")
def _english_capital(response: str) -> bool:
  """All capital letters, and English."""
  return response.isupper() and is_english(response)


@_register("change_case:english_lowercase")
def _english_lowercase(response: str) -> bool:
  """All lowercase letters, and English."""
  return response.islower() and is_english(response)


@_register("change_case:capital_word_frequency")
def _capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
  """The number of all-capital word tokens compares to `capital_frequency`."""
  from nltk.tokenize import NLTKWordTokenizer

  words = NLTKWordTokenizer().tokenize(response)
  return _compare(sum(w.isupper() for w in words), capital_relation, capital_frequency)


# --- length ----------------------------------------------------------------------------------------------------------


@_register("length_constraints:number_words")
def _number_words(response: str, *, num_words: int, relation: str) -> bool:
  """The word count compares to `num_words`."""
  return _compare(count_words(response), relation, num_words)


@_register("length_constraints:number_sentences")
def _number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
  """The sentence count compares to `num_sentences`."""
  return _compare(count_sentences(response), relation, num_sentences)


@_register("length_constraints:number_paragraphs")
def _number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
  """Exactly `num_paragraphs` paragraphs separated by `***` (an empty paragraph in the middle fails)."""
  paragraphs = re.split(r"\s?\*\*\*\s?", response)
  count = len(paragraphs)
  for i, paragraph in enumerate(paragraphs):
    if not paragraph.strip():
      if i in (0, len(paragraphs) - 1):
        count -= 1
      else:
        return False
  return count == num_paragraphs


@_register("length_constraints:nth_paragraph_first_word")
def _nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
  """Exactly `num_paragraphs` paragraphs separated by blank lines, paragraph `nth_paragraph` (1-based) starting with
  `first_word` (case-insensitive, trailing punctuation ignored)."""
  paragraphs = re.split(r"\n\n", response)
  count = sum(bool(p.strip()) for p in paragraphs)
  if nth_paragraph > count:
    return False
  paragraph = paragraphs[nth_paragraph - 1].strip()
  if not paragraph:
    return False
  word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
  first = ""
  for ch in word:
    if ch in ".,?!'\"":
      break
    first += ch.lower()
  return count == num_paragraphs and first == first_word.lower()


# --- content ---------------------------------------------------------------------------------------------------------


@_register("detectable_content:number_placeholders")
def _number_placeholders(response: str, *, num_placeholders: int) -> bool:
  """At least `num_placeholders` square-bracket placeholders like [address]."""
  return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


@_register("detectable_content:postscript")
def _postscript(response: str, *, postscript_marker: str) -> bool:
  """A line (case-insensitive) contains the postscript marker, e.g. "P.S." (spacing-tolerant for P.S./P.P.S)."""
  marker = postscript_marker.strip()
  if marker == "P.P.S":
    pattern = r"\s*p\.\s?p\.\s?s.*$"
  elif marker == "P.S.":
    pattern = r"\s*p\.\s?s\..*$"
  else:
    pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
  return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


# --- format ----------------------------------------------------------------------------------------------------------


@_register("detectable_format:number_bullet_lists")
def _number_bullet_lists(response: str, *, num_bullets: int) -> bool:
  """Exactly `num_bullets` markdown bullet lines (starting with `*` or `-`)."""
  stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
  dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
  return len(stars) + len(dashes) == num_bullets


@_register("detectable_format:constrained_response")
def _constrained_response(response: str) -> bool:
  """Contains one of "My answer is yes./no./maybe."."""
  response = response.strip()
  return any(option in response for option in _CONSTRAINED_RESPONSE_OPTIONS)


@_register("detectable_format:number_highlighted_sections")
def _number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
  """At least `num_highlights` non-empty *highlighted* or **highlighted** sections."""
  singles = re.findall(r"\*[^\n\*]*\*", response)
  doubles = re.findall(r"\*\*[^\n\*]*\*\*", response)
  count = sum(bool(h.strip("*").strip()) for h in singles)
  count += sum(bool(h.removeprefix("**").removesuffix("**").strip()) for h in doubles)
  return count >= num_highlights


@_register("detectable_format:multiple_sections")
def _multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
  """At least `num_sections` sections, each started by "<section_spliter> <number>" (e.g. "SECTION 1")."""
  pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
  return len(re.split(pattern, response)) - 1 >= num_sections


@_register("detectable_format:json_format")
def _json_format(response: str) -> bool:
  """The whole response parses as JSON, optionally inside a ``` / ```json fence."""
  text = response.strip()
  for prefix in ("```json", "```Json", "```JSON", "```"):
    text = text.removeprefix(prefix)
  text = text.removesuffix("```").strip()
  try:
    json.loads(text)
  except ValueError:
    return False
  return True


@_register("detectable_format:title")
def _title(response: str) -> bool:
  """Contains a non-empty title in double angular brackets, like <<poem of joy>>."""
  return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


# --- combination -----------------------------------------------------------------------------------------------------


@_register("combination:two_responses")
def _two_responses(response: str) -> bool:
  """Exactly two different responses separated by ******."""
  parts = response.split("******")
  valid = []
  for i, part in enumerate(parts):
    if part.strip():
      valid.append(part.strip())
    elif i not in (0, len(parts) - 1):
      return False
  return len(valid) == 2 and valid[0] != valid[1]


@_register("combination:repeat_prompt")
def _repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
  """Starts by repeating the request word for word (case-insensitive)."""
  return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


# --- start / end / punctuation ---------------------------------------------------------------------------------------


@_register("startend:end_checker")
def _end_checker(response: str, *, end_phrase: str) -> bool:
  """Ends with `end_phrase` (case-insensitive; surrounding whitespace and double quotes ignored)."""
  return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@_register("startend:quotation")
def _quotation(response: str) -> bool:
  """The whole response is wrapped in double quotes."""
  text = response.strip()
  return len(text) > 1 and text[0] == '"' and text[-1] == '"'


@_register("multi-turn:constrained_start")
def _constrained_start(response: str, *, starter: str) -> bool:
  """A line starts with `starter` (IFEval's ConstrainedStartChecker; its registry leaves this id disabled)."""
  return bool(re.search(r"^\s*" + re.escape(starter.strip()) + r".*$", response, flags=re.MULTILINE))


@_register("punctuation:no_comma")
def _no_comma(response: str) -> bool:
  """No commas anywhere."""
  return "," not in response


# --- instructions and evaluation -------------------------------------------------------------------------------------


def _lookup(instruction_id: str) -> Checker:
  """The checker for an id; a UserError names the unknown id and the nearest known ones."""
  if instruction_id not in INSTRUCTIONS:
    near = difflib.get_close_matches(instruction_id, INSTRUCTIONS, n=3, cutoff=0.5)
    hint = f"nearest known ids: {', '.join(near)}" if near else f"known ids: {', '.join(sorted(INSTRUCTIONS))}"
    raise UserError(f"unknown IFEval instruction id {instruction_id!r}; {hint}")
  return INSTRUCTIONS[instruction_id]


def loose_variants(response: str) -> list[str]:
  """IFEval's loose responses: as is, without first/last/both lines, each also with `*` removed."""
  lines = response.split("\n")
  trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
  return [trimmed[0], trimmed[0].replace("*", ""), *trimmed[1:], *(r.replace("*", "") for r in trimmed[1:])]


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One verifiable instruction: an id from INSTRUCTIONS and its kwargs (None-valued kwargs are dropped, as in
  IFEval data where every example carries every kwarg name)."""

  id: str
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self) -> None:
    fn = _lookup(self.id)
    kwargs = {k: v for k, v in (self.kwargs or {}).items() if v is not None}
    try:
      inspect.signature(fn).bind("", **kwargs)
    except TypeError as e:
      raise UserError(f"IFEval instruction {self.id!r}: bad kwargs {sorted(kwargs)}: {e}") from None
    object.__setattr__(self, "kwargs", kwargs)

  def check(self, response: str) -> bool:
    """Strict check: the response as is; an empty or blank response follows nothing."""
    return bool(response.strip()) and bool(INSTRUCTIONS[self.id](response, **self.kwargs))

  def check_loose(self, response: str) -> bool:
    """Loose check: any of IFEval's loose variants of the response passes."""
    return any(self.check(r) for r in loose_variants(response))


def check_example(example: Mapping[str, Any]) -> tuple[list[bool], list[bool]]:
  """(strict, loose) follow flags, one per instruction of an IFEval example."""
  try:
    ids, kwargs_list, response = example["instruction_id_list"], example["kwargs"], example["response"]
  except KeyError as e:
    raise UserError(f"IFEval example lacks {e.args[0]!r} (needs instruction_id_list, kwargs, response)") from None
  if len(ids) != len(kwargs_list):
    raise UserError(f"IFEval example has {len(ids)} instruction ids but {len(kwargs_list)} kwargs dicts")
  instructions = [Instruction(i, kw) for i, kw in zip(ids, kwargs_list, strict=True)]
  variants = loose_variants(response)
  strict = [ins.check(response) for ins in instructions]
  loose = [any(ins.check(v) for v in variants) for ins in instructions]
  return strict, loose


def _pct(num: int, den: int) -> float:
  return 100.0 * num / den if den else float("nan")


def evaluate(examples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """IFEval accuracies (%): prompt- and instruction-level, strict and loose, plus per instruction id and category.

  `per_instruction[id]` / `per_category[category]` hold {"strict": %, "loose": %, "count": n}; a category is the
  part of the id before ":". Empty input scores NaN.
  """
  n_prompts = prompt_strict = prompt_loose = 0
  inst_strict: list[bool] = []
  inst_loose: list[bool] = []
  by_id: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
  for example in examples:
    strict, loose = check_example(example)
    n_prompts += 1
    prompt_strict += all(strict)
    prompt_loose += all(loose)
    inst_strict += strict
    inst_loose += loose
    for instruction_id, s, lo in zip(example["instruction_id_list"], strict, loose, strict=True):
      by_id[instruction_id].append((s, lo))

  def summary(flags: list[tuple[bool, bool]]) -> dict[str, float]:
    return {"strict": _pct(sum(s for s, _ in flags), len(flags)), "loose": _pct(sum(lo for _, lo in flags), len(flags)),
            "count": len(flags)}

  by_category: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
  for instruction_id, flags in by_id.items():
    by_category[instruction_id.split(":")[0]] += flags
  return {
      "prompt_level_strict_acc": _pct(prompt_strict, n_prompts),
      "inst_level_strict_acc": _pct(sum(inst_strict), len(inst_strict)),
      "prompt_level_loose_acc": _pct(prompt_loose, n_prompts),
      "inst_level_loose_acc": _pct(sum(inst_loose), len(inst_loose)),
      "per_instruction": {k: summary(v) for k, v in sorted(by_id.items())},
      "per_category": {k: summary(v) for k, v in sorted(by_category.items())},
  }
