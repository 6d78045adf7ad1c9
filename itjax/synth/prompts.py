"""The prompts sent to the teacher, and the parsers that read its answers (raising `Malformed` to get a retry).

Written for this project after the methods of Self-Instruct (Wang et al., 2022: numbered task lists, a
classification check, input-first and output-first instance generation) and Evol-Instruct (Xu et al., 2023: five
in-depth rewrites and one in-breadth creation). The prompts work for completion models (the answer continues the
text) and chat models (the text is the user turn).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from itjax.synth.teacher import Completion, Malformed

# --- Self-Instruct ----------------------------------------------------------------------------------------------------
INSTRUCTIONS_HEADER = (
    "Here is a numbered list of tasks that people ask an AI assistant to do. Continue the list with new tasks, one "
    "per line, that differ from every task above them: vary the topic, the verb, the length and the kind of answer. "
    "Tasks can ask for writing, rewriting, explaining, classifying, extracting, calculating, planning or advice. When "
    "a task works on some material (a passage, a list, a sentence), say so in the task but do not include the "
    "material.\n\n")
_NUMBERED = re.compile(r"^[ \t]*(\d{1,3})[ \t]*[.):][ \t]+", re.MULTILINE)


def instructions_prompt(demos: Sequence[str]) -> str:
  """The demonstration tasks numbered 1..k, ending with "k+1." for the teacher to continue."""
  body = "".join(f"{i}. {' '.join(d.split())}\n" for i, d in enumerate(demos, start=1))
  return f"{INSTRUCTIONS_HEADER}{body}{len(demos) + 1}."


def parse_instructions(c: Completion, *, leading_is_item: bool) -> list[tuple[str, str | None]]:
  """(instruction, None) per numbered item of an answer; the last is (text, "truncated") when the answer was cut.

  A completion model continues after "k+1.", so its answer's first line is an item (`leading_is_item`); a chat
  model's text before the first number is a preamble. An answer without numbers is one item.
  """
  text = c.text.strip("\n")
  matches = list(_NUMBERED.finditer(text))
  parts = []
  if leading_is_item or not matches:
    parts.append(text[: matches[0].start()] if matches else text)
  for m, nxt in zip(matches, [*matches[1:], None], strict=False):
    parts.append(text[m.end(): nxt.start() if nxt else len(text)])
  items = [" ".join(re.split(r"\n\s*\n", p.strip())[0].split()) for p in parts]
  items = [i for i in items if i] if items[1:] else items  # keep one (maybe empty) item so it is counted
  if not items or (len(items) == 1 and not items[0]):
    raise Malformed("an empty list of tasks")
  out: list[tuple[str, str | None]] = [(i, None) for i in items]
  if c.finish_reason == "length":
    out[-1] = (out[-1][0], "truncated")
  return out


CLASSIFY_HEADER = ("Is each task a classification task, whose answer is a label from a small, fixed set (such as yes "
                   "or no, positive or negative, or a category name)? Answer Yes or No.\n\n")


def classify_prompt(demos: Sequence[tuple[str, bool]], instruction: str) -> str:
  """Few-shot Yes/No question: is `instruction` a classification task."""
  body = "".join(f"Task: {d}\nClassification: {'Yes' if c else 'No'}\n\n" for d, c in demos)
  return f"{CLASSIFY_HEADER}{body}Task: {instruction}\nClassification:"


def parse_yes_no(c: Completion) -> bool | None:
  """True for an answer starting with "yes", False for "no", None for anything else (asked greedily, so a retry
  would answer the same)."""
  m = re.match(r"\W*(yes|no)\b", c.text.strip().lower())
  return m.group(1) == "yes" if m else None


INSTANCES_HEADER = ("Write examples for each task: an input (or \"<none>\" when the task needs no input) and the "
                    "correct output. Make the inputs varied and realistic.\n\n")
CLASS_INSTANCES_HEADER = ("For each classification task, write one example per possible class label: first the label, "
                          "then an input that has that label. Cover every label.\n\n")
STOP_AT_NEXT_TASK = ("\nTask:",)


def instances_prompt(demos: Sequence[tuple[str, Sequence[tuple[str, str]]]], instruction: str) -> str:
  """Input-first instance generation: demos' examples, then the new task and "Example 1" to continue."""
  out = [INSTANCES_HEADER]
  for task, instances in demos:
    out.append(f"Task: {task}\n")
    for k, (inp, output) in enumerate(instances, start=1):
      out.append(f"Example {k}\nInput: {inp.strip() or '<none>'}\nOutput: {output.strip()}\n")
    out.append("\n")
  out.append(f"Task: {instruction}\nExample 1\n")
  return "".join(out)


def class_instances_prompt(demos: Sequence[tuple[str, Sequence[tuple[str, str]]]], instruction: str) -> str:
  """Output-first instance generation (for classification tasks): label, then an input with that label."""
  out = [CLASS_INSTANCES_HEADER]
  for task, instances in demos:
    out.append(f"Task: {task}\n")
    for inp, output in instances:
      out.append(f"Class label: {output.strip()}\nInput: {inp.strip() or '<none>'}\n")
    out.append("\n")
  out.append(f"Task: {instruction}\nClass label:")
  return "".join(out)


_EXAMPLE = re.compile(r"Input\s*:[ \t]*(.*?)\s*\n\s*Output\s*:[ \t]*(.*?)\s*"
                      r"(?=\n\s*(?:Example\s*\d+\s*:?|Input\s*:)|\Z)", re.DOTALL | re.IGNORECASE)
_LABELED = re.compile(r"Class label\s*:[ \t]*([^\n]*?)[ \t]*\n\s*Input\s*:[ \t]*(.*?)\s*(?=\n\s*Class label\s*:|\Z)",
                      re.DOTALL | re.IGNORECASE)
_NONE = ("<none>", "none", "n/a", "<no input>", "no input", "")


def _clean_input(text: str) -> str:
  return "" if text.strip().lower() in _NONE else text.strip()


def parse_instances(c: Completion, *, output_first: bool) -> list[tuple[str, str, str | None]]:
  """(input, output, None) per example of an instance answer; the last gets "truncated" when the answer was cut."""
  text = re.split(r"\n\s*Task\s*:", c.text)[0]
  if output_first:  # the prompt ends with "Class label:", so a completion starts with the label
    text = text if re.match(r"\s*Class label\s*:", text, re.IGNORECASE) else "Class label:" + text
    found = [(_clean_input(i), label.strip()) for label, i in _LABELED.findall(text) if label.strip()]
  else:
    found = [(_clean_input(i), o.strip()) for i, o in _EXAMPLE.findall(text)]
  if not found:
    raise Malformed(f"no examples in {c.text.strip()[:60]!r}")
  out: list[tuple[str, str, str | None]] = [(i, o, None) for i, o in found]
  if c.finish_reason == "length":
    out[-1] = (*out[-1][:2], "truncated")
  return out


# --- Evol-Instruct ----------------------------------------------------------------------------------------------------
DEPTH_HEADER = (
    "Rewrite the prompt below into a harder version for an AI assistant. The rewrite must stay reasonable, "
    "self-contained and answerable by a person, and keep any table, code or input of the original. Make it harder "
    "in this way only: {method}. Add at most 10 to 20 words. Reply with the rewritten prompt alone, with no heading, "
    "label or comment.\n\nPrompt:\n{prompt}\n\nHarder prompt:\n")
DEPTH_METHODS = {
    "constraints": "add one more constraint or requirement that the answer must satisfy",
    "deepen": "where the prompt asks about something, ask about it in more depth and breadth",
    "concretize": "replace general concepts with more specific, concrete ones",
    "reasoning": "if it can be answered in a few obvious steps, make it explicitly require reasoning over several "
                 "steps",
    "complicate_input": "add a richer input for the prompt to work on (a small table, a code snippet, structured data "
                        "or a formula) and refer to it",
}
BREADTH_HEADER = (
    "Write a brand-new prompt for an AI assistant, inspired by the prompt below: in the same domain but on a rarer "
    "topic, about as long and as hard, reasonable and answerable by a person. Reply with the new prompt alone, with "
    "no heading, label or comment.\n\nPrompt:\n{prompt}\n\nNew prompt:\n")
EVOL_OPS = (*DEPTH_METHODS, "breadth")
EQUAL_HEADER = (
    "Do these two prompts ask for the same thing, with the same constraints and requirements and the same depth "
    "and breadth? Answer Equal or Not equal.\n\nFirst prompt:\n{a}\n\nSecond prompt:\n{b}\n\nAnswer:")


def evol_prompt(op: str, prompt: str) -> str:
  """The rewriting prompt for one evolution operation (an in-depth method, or "breadth")."""
  if op == "breadth":
    return BREADTH_HEADER.format(prompt=prompt)
  return DEPTH_HEADER.format(method=DEPTH_METHODS[op], prompt=prompt)


def parse_evolved(c: Completion) -> tuple[str, str | None]:
  """(evolved prompt, None), or (text, "truncated") when cut; an empty answer is Malformed."""
  text = c.text.strip()
  if not text:
    raise Malformed("an empty rewritten prompt")
  return text, "truncated" if c.finish_reason == "length" else None


def parse_equal(c: Completion) -> bool:
  """True for "Equal", False for "Not equal"; anything else is Malformed."""
  low = c.text.strip().lower()
  if low.startswith(("not equal", "not the same", "no")):
    return False
  if low.startswith(("equal", "the same", "yes")):
    return True
  raise Malformed(f"expected Equal or Not equal, got {c.text.strip()[:40]!r}")


# --- Distillation -----------------------------------------------------------------------------------------------------
COT_SUFFIX = ("\n\nThink it through step by step, then give the final answer on a last line starting with "
              "\"So the answer is\".")
FOLLOWUP_HEADER = (
    "Here is a conversation between a user and an AI assistant. Write the user's next message: a natural follow-up "
    "question or request that builds on the assistant's last answer. Reply with the message alone, with no label or "
    "comment.\n\n{conversation}\n\nThe user's next message:\n")


def followup_prompt(messages: Sequence[dict]) -> str:
  """Asks for the user's next turn in a dialogue (messages with roles user / assistant)."""
  conversation = "\n\n".join(f"{m['role'].title()}: {m['content']}" for m in messages if m["role"] != "system")
  return FOLLOWUP_HEADER.format(conversation=conversation)


def parse_followup(c: Completion) -> str:
  """The follow-up message, without a "User:" label the teacher may add; an empty one is Malformed."""
  text = re.sub(r"^\s*(user|the user's next message)\s*:\s*", "", c.text.strip(), flags=re.IGNORECASE).strip()
  if not text:
    raise Malformed("an empty follow-up message")
  return text
