"""Every filter on crafted inputs; the bit-parallel ROUGE-L against rouge-score; the prompt parsers."""

import random

import pytest
from rouge_score import rouge_scorer

from itjax.synth import filters, prompts
from itjax.synth.teacher import Completion, Malformed

WORDS = "the a cat dog sat on mat red blue big small runs jumps over under and of to in why how".split()


def _dp_lcs(a, b):
  t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i, x in enumerate(a):
    for j, y in enumerate(b):
      t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
  return t[-1][-1]


def test_rouge_l_agrees_with_rouge_score():
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  rng = random.Random(0)
  texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 25))) for _ in range(120)]
  texts += ["Summarize the paragraph in one sentence!", "summarize this paragraph, in ONE sentence.", "", "!!!",
            "Écrivez un résumé du paragraphe", "x" * 70]
  for a, b in zip(texts, texts[1:] + texts[:1], strict=True):
    ta, tb = filters.rouge_tokens(a), filters.rouge_tokens(b)
    assert filters.lcs_length(ta, tb) == _dp_lcs(ta, tb)
    assert filters.rouge_l(ta, tb) == pytest.approx(scorer.score(b, a)["rougeL"].fmeasure, abs=1e-12)


def test_rouge_pool_most_similar_is_the_max_over_the_pool():
  rng = random.Random(1)
  pool_texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(60)]
  pool = filters.RougePool(pool_texts)
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  for _ in range(20):
    cand = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
    best, text = pool.most_similar(cand)
    want = max(scorer.score(p, cand)["rougeL"].fmeasure for p in pool_texts)
    assert best == pytest.approx(want, abs=1e-12)
    assert scorer.score(text, cand)["rougeL"].fmeasure == pytest.approx(want, abs=1e-12)
  assert filters.RougePool().most_similar("anything") == (0.0, None)


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("Summarize it.", "too_short"),
    ("Explain " + "very " * 150 + "carefully.", "too_long"),
    ("Describe the image in the attachment.", "blacklist"),
    ("Draw a cat using only letters.", "blacklist"),
    ("Go to the website and report the price.", "blacklist"),
    ("Write a program that sorts a list of numbers.", "invalid_start"),
    ("- List three fruits that are red.", "invalid_start"),
    ("\"Translate the sentence into French.\"", "invalid_start"),
    ("Écrivez un poème sur la mer.", "invalid_start"),
    ("Here is the #Rewritten Prompt#: explain gravity to a child.", "copied_marker"),
    ("List three uses of mapping software in city planning.", None),  # "mapping" is not the word "map"
    ("Explain how a bicycle gear system works.", None),
    ("3 reasons to learn a second language: list them.", None),
])
def test_instruction_reason(text, reason):
  assert filters.instruction_reason(text) == reason


def test_similarity_filter_uses_the_threshold():
  pool = filters.RougePool(["Give three synonyms for the given word."])
  assert filters.similar_reason("Give three synonyms for the word.", pool) == "similar"
  assert filters.similar_reason("Give three antonyms for the given word and use each in a sentence.", pool) is None
  assert filters.similar_reason("Write a haiku about autumn leaves.", pool) is None


def test_instance_reasons():
  instances = [
      ("cat", "chat"),                      # kept
      ("dog", ""),                          # empty output
      ("Hello there.", "hello there"),      # the output repeats the input
      ("x", "word " * 500),                 # too long
      ("Input: a sentence", "Output: b"),   # copied the prompt's markers
      ("cat", "chat"),                      # duplicate of the first
      ("bird", "oiseau"),                   # same input, two different outputs: both dropped
      ("bird", "pájaro"),
      ("", "A generated answer."),          # no input is fine
  ]
  assert filters.instance_reasons(instances) == [
      None, "empty_output", "same_as_input", "too_long", "copied_marker", "duplicate", "conflicting_outputs",
      "conflicting_outputs", None]


@pytest.mark.parametrize("text, finish, reason", [
    ("", "stop", "empty"),
    ("A fine answer that explains the idea clearly.", "length", "truncated"),
    ("I'm sorry, but I cannot help with that request.", "stop", "refusal"),
    ("As an AI language model, I do not have opinions.", "stop", "refusal"),
    ("... !!! ?? the of and", "stop", "degenerate"),
    ("yes yes yes " * 20, "stop", "degenerate"),
    ("Paris is the capital of France.", "stop", None),
    ("Sorry for the confusion earlier: " + " ".join(f"step{i} follows" for i in range(90)), "stop", None),
    # long answers that apologize are not refusals
])
def test_response_reason(text, finish, reason):
  assert filters.response_reason(text, finish) == reason


@pytest.mark.parametrize("instruction, answer, reason", [
    # One character is too short to be an answer ...
    ("Explain why the sky is blue.", "x", "too_short"),
    ("Write a short poem about rain.", "A.", "too_short"),
    ("Translate 'good morning' into French.", "\u00e9", "too_short"),
    # ... unless it is a number, or the instruction asks for a choice, a label, a count or yes/no.
    ("What is 3 + 4?", "7", None),
    ("Convert 0.5 to a percentage.", "50%", None),
    ("Which of the following is a mammal? (a) shark (b) whale", "b", None),
    ("Choose the correct option:\nA) Paris\nB) Rome", "A", None),
    ("Answer with a single letter: what letter does 'apple' start with?", "a", None),
    ("Is water wet? Answer yes or no.", "Yes.", None),  # only stop words, but a yes/no answer was asked for
    ("Classify the review as positive or negative: 'Great food.'", "positive", None),
    # Two letters or more are not "too short"; stop-word-only answers stay degenerate where no short answer is due.
    ("Name a chemical element.", "Fe", None),
    ("Explain how rainbows form.", "Yes.", "degenerate"),
    ("Is water wet? Answer yes or no.", "yes " * 10, "degenerate"),
])
def test_too_short_answers_unless_a_short_answer_is_asked_for(instruction, answer, reason):
  assert filters.response_reason(answer, "stop", instruction=instruction) == reason


def test_one_character_outputs_of_instances_are_kept_only_as_labels():
  instances = [("The movie was great.", "P"), ("The movie was awful.", "N")]
  assert filters.instance_reasons(instances, instruction="Summarize the review.") == ["too_short", "too_short"]
  assert filters.instance_reasons(instances, instruction="Summarize the review.", labels=True) == [None, None]
  assert filters.instance_reasons([("2 + 2", "4")], instruction="Add the numbers.") == [None]


def test_evolution_checks():
  original = "Explain how vaccines train the immune system."
  assert filters.no_new_information(original, original)
  assert filters.no_new_information("explain how vaccines train the immune system", original)
  assert filters.no_new_information("Explain how vaccines train immune system.", original)  # shorter near copy
  assert not filters.no_new_information(
      "Explain how vaccines train the immune system, and compare mRNA and inactivated vaccines in a table.", original)
  assert filters.copied_marker("#Rewritten Prompt#: Explain vaccines.")
  assert filters.copied_marker("Here is the rewritten prompt: ...")
  assert not filters.copied_marker("Explain how vaccines work, citing two studies.")


# --- prompt parsers ---------------------------------------------------------------------------------------------------
def test_instruction_prompt_and_parser():
  p = prompts.instructions_prompt(["Task one.", "Task\ntwo."])
  assert p.endswith("1. Task one.\n2. Task two.\n3.")
  completion = Completion(" Name a fruit.\n4. Explain rain.\n5) Give advice on sleep.\n\nThat is all.", "stop")
  assert prompts.parse_instructions(completion, leading_is_item=True) == [
      ("Name a fruit.", None), ("Explain rain.", None), ("Give advice on sleep.", None)]
  chat = Completion("Here are more tasks:\n3. Name a fruit.\n4. Explain rain", "length")
  assert prompts.parse_instructions(chat, leading_is_item=False) == [("Name a fruit.", None),
                                                                       ("Explain rain", "truncated")]
  assert prompts.parse_instructions(Completion("just text"), leading_is_item=False) == [("just text", None)]
  with pytest.raises(Malformed):
    prompts.parse_instructions(Completion("  \n"), leading_is_item=True)


def test_instance_parsers():
  text = " Input: The cat sat.\nOutput: Le chat était assis.\nExample 2\nInput: <none>\nOutput: Bonjour.\n\nTask: next"
  assert prompts.parse_instances(Completion(text), output_first=False) == [
      ("The cat sat.", "Le chat était assis.", None), ("", "Bonjour.", None)]
  labeled = " Positive\nInput: Loved it.\nClass label: Negative\nInput: Hated it, and the"
  assert prompts.parse_instances(Completion(labeled, "length"), output_first=True) == [
      ("Loved it.", "Positive", None), ("Hated it, and the", "Negative", "truncated")]
  with pytest.raises(Malformed):
    prompts.parse_instances(Completion("no structure here"), output_first=False)
  assert prompts.parse_yes_no(Completion(" Yes.")) is True
  assert prompts.parse_yes_no(Completion("no")) is False
  assert prompts.parse_yes_no(Completion("maybe")) is None
  assert prompts.parse_equal(Completion("Not Equal")) is False
  assert prompts.parse_equal(Completion("Equal")) is True
  with pytest.raises(Malformed):
    prompts.parse_equal(Completion("hmm"))
