"""IFEval checks: one passing and one failing response per instruction, loose vs strict, and hand-computed
aggregate accuracies."""

import math

import pytest

from itjax.errors import UserError
from itjax.eval import ifeval
from itjax.eval.ifeval import Instruction

AT_LEAST, LESS, AT_MOST = "at least", "less than", "at most"

# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    ("length_constraints:number_words", {"num_words": 5, "relation": AT_LEAST}, "one two three four five",
     "one two three"),
    ("length_constraints:number_words", {"num_words": 3, "relation": LESS}, "one two", "one two three"),
    ("length_constraints:number_words", {"num_words": 3, "relation": AT_MOST}, "one, two, three", "one two three four"),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": LESS}, "One. Two.", "One. Two. Three."),
    # "Dr." is a known abbreviation, so the failing response is one sentence.
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": AT_LEAST}, "Dr. Smith came. He left.",
     "Dr. Smith came home."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "A\n***\nB\n***\nC", "A\n***\nB"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "***\nA\n***\nB\n***\nC", "A\n***\n***\nC"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
     "Intro.\n\nHowever, yes.", "Intro.\n\nBut yes."),
    ("keywords:existence", {"keywords": ["Paris", "tower"]}, "The Eiffel Tower is in paris.", "The tower is tall."),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "This is a badge.", "That was BAD."),
    ("keywords:frequency", {"keyword": "data", "frequency": 3, "relation": AT_LEAST}, "data Data DATA", "data data"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": LESS}, "a zebra", "ZigZag"),
    ("language:response_language", {"language": "en"}, "Hello there, friend!", "Привет, мир!"),
    ("language:response_language", {"language": "ru"}, "Привет, мир! OK", "Hello there, friend!"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] lives at [address].", "[name] only"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. see you", "Hi. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\np. p. s. bye", "Hi.\nP.S. bye"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Intro\n* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nfoo\nSECTION 2\nbar", "SECTION 1\nfoo"),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', 'Here you go: {"a": 1}'),
    ("detectable_format:title", {}, "<<My Poem>>\nroses are red", "My Poem\nroses are red"),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Same.\n******\nSame."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses...",
     "Sure. Write a poem."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Done. Any other questions?"',
     "Any other questions? Bye."),
    ("startend:quotation", {}, '  "hello, world"  ', 'hello "world"'),
    ("multi-turn:constrained_start", {"starter": "My answer is"}, "My answer is yes", "Well, my answer is yes"),
    ("change_case:english_lowercase", {}, "hello world, 42!", "Hello world"),
    ("change_case:english_capital", {}, "HELLO WORLD!", "HELLO World"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": AT_LEAST}, "I AM here",
     "I am here"),
    ("punctuation:no_comma", {}, "a b c", "a, b"),
]


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction(instruction_id, kwargs, good, bad):
  ins = Instruction(instruction_id, kwargs)
  assert ins.check(good)
  assert not ins.check(bad)


def test_every_instruction_is_tested():
  assert {c[0] for c in CASES} == set(ifeval.INSTRUCTIONS)


def test_non_ascii_letters_are_not_english():
  assert not Instruction("change_case:english_lowercase").check("héllo world")
  assert Instruction("change_case:english_lowercase").check("it’s fine — really")  # punctuation may be non-ASCII


def test_loose_passes_what_strict_fails_for_a_preamble_line():
  response = "Sure, here it is:\n<<Autumn>>\nleaves fall slowly"
  no_comma = Instruction("punctuation:no_comma")
  assert not no_comma.check(response)
  assert no_comma.check_loose(response)  # the variant without the first line has no comma
  quoted = Instruction("startend:quotation")
  assert not quoted.check('**"hello"**') and quoted.check_loose('**"hello"**')  # asterisks stripped
  assert not no_comma.check(" \n ") and not no_comma.check_loose(" \n ")  # blank responses follow nothing


def test_kwargs_validation():
  # IFEval data rows carry every kwarg name, unused ones as None.
  assert Instruction("length_constraints:number_words", {"num_words": 1, "relation": AT_LEAST, "keyword": None}).check(
      "hi")
  with pytest.raises(UserError, match="num_words"):
    Instruction("length_constraints:number_words", {"num_word": 3, "relation": AT_LEAST})
  with pytest.raises(UserError, match="relation"):
    Instruction("length_constraints:number_words", {"num_words": 3, "relation": "more than"}).check("hi")
  with pytest.raises(UserError, match="language"):
    Instruction("language:response_language", {"language": "xx"}).check("hi")


def test_unknown_id_names_nearest():
  with pytest.raises(UserError, match="length_constraint:number_word.*length_constraints:number_words"):
    Instruction("length_constraint:number_word")
  with pytest.raises(UserError, match="nearest"):
    ifeval.evaluate([{"prompt": "p", "instruction_id_list": ["punctuation:no_commas"], "kwargs": [{}],
                      "response": "x"}])


def _ex(ids, kwargs, response):
  return {"prompt": "p", "instruction_id_list": ids, "kwargs": kwargs, "response": response}


def test_evaluate_aggregates():
  examples = [
      # strict [T, T], loose [T, T]
      _ex(["punctuation:no_comma", "change_case:english_lowercase"], [{}, {}], "hello world"),
      # no_comma fails strict only because of the preamble line: strict [F, T], loose [T, T]
      _ex(["punctuation:no_comma", "length_constraints:number_words"], [{}, {"num_words": 3, "relation": AT_LEAST}],
          "Sure, here it is:\nhello there world"),
      # strict [F], loose [F] (every trimmed variant is blank)
      _ex(["change_case:english_capital"], [{}], "Hello"),
      # title passes; the end phrase is followed by "Extra" in every variant: strict [T, F], loose [T, F]
      _ex(["detectable_format:title", "startend:end_checker"], [{}, {"end_phrase": "Bye."}],
          "<<T>>\nbody\nBye. Extra"),
  ]
  out = ifeval.evaluate(examples)
  assert out["prompt_level_strict_acc"] == pytest.approx(100 * 1 / 4)
  assert out["inst_level_strict_acc"] == pytest.approx(100 * 4 / 7)
  assert out["prompt_level_loose_acc"] == pytest.approx(100 * 2 / 4)
  assert out["inst_level_loose_acc"] == pytest.approx(100 * 5 / 7)
  per = out["per_instruction"]
  assert per["punctuation:no_comma"] == {"strict": 50.0, "loose": 100.0, "count": 2}
  assert per["change_case:english_capital"] == {"strict": 0.0, "loose": 0.0, "count": 1}
  assert per["detectable_format:title"] == {"strict": 100.0, "loose": 100.0, "count": 1}
  assert out["per_category"]["change_case"] == {"strict": 50.0, "loose": 50.0, "count": 2}
  assert len(per) == 6


def test_evaluate_empty_is_nan():
  out = ifeval.evaluate([])
  assert all(math.isnan(out[k]) for k in ("prompt_level_strict_acc", "inst_level_strict_acc",
                                          "prompt_level_loose_acc", "inst_level_loose_acc"))
  assert out["per_instruction"] == {}


def test_malformed_example():
  with pytest.raises(UserError, match="kwargs"):
    ifeval.evaluate([_ex(["punctuation:no_comma"], [], "x")])
  with pytest.raises(UserError, match="response"):
    ifeval.evaluate([{"instruction_id_list": [], "kwargs": []}])
