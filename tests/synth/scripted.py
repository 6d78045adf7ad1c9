"""Scripted teachers for the pipeline tests: answers made from the prompt, with crafted good and bad parts."""

import itertools
import random
import re
import threading

from fake_teacher import Raw

from itjax.synth import prompts

WORDS = ("amber basil cedar delta ember fjord glacier harbor iris jasper kelp lagoon marble nectar onyx prairie "
         "quartz raven saffron tundra umber velvet willow xenon yarrow zephyr anchor beacon canyon dune estuary "
         "falcon granite heron island juniper kestrel lantern meadow nebula orchard pebble quiver reef summit "
         "thicket upland valley walnut yonder zenith").split()


def _words(seed, n):
  rng = random.Random(str(seed))
  return " ".join(rng.choice(WORDS) for _ in range(n))


def self_instruct_teacher(faults=None, always_fail=()):
  """A respond function for Self-Instruct.

  Each instruction request returns 2 good instructions (one of them a classification task every other request)
  and 5 bad ones (blacklist, too short, a seed copy, invalid start, and a truncated last item on every third
  request). `faults` maps a request number to a `Raw` answer sent instead (once); an instance request whose task
  contains a word of `always_fail` always gets HTTP 500.
  """
  counter, lock = itertools.count(), threading.Lock()
  n_instr = itertools.count()
  faults = dict(faults or {})

  def respond(body, prompt):
    with lock:
      k = next(counter)
      fault = faults.pop(k, None)
    if fault is not None:
      return fault
    if prompt.startswith(prompts.INSTRUCTIONS_HEADER):
      i = next(n_instr)
      good1 = f"Describe the {_words((i, 1), 6)} in two sentences."
      good2 = (f"Label the sentiment of this {_words((i, 2), 5)} review as positive or negative." if i % 2
               else f"Plan a weekend visit to {_words((i, 2), 6)} for a family.")
      items = [good1, "Draw a map of the old town.", "Sort.", "Summarize the paragraph in one sentence.", good2,
               "Write a program that prints primes."]
      finish = "stop"
      if i % 3 == 2:
        items.append("Explain why the")
        finish = "length"
      return " " + "\n".join(f"{n}. {t}" if n > 9 else t for n, t in enumerate(items, start=9)), finish
    task = re.findall(r"Task: (.*)", prompt)[-1]
    if prompt.startswith(prompts.CLASSIFY_HEADER):
      return " Yes" if task.startswith("Label") else " No"
    if any(w in task for w in always_fail):
      return Raw(500, "instance generation failed")
    tag = " ".join(task.split()[2:5])
    if prompt.startswith(prompts.CLASS_INSTANCES_HEADER):
      return f" Positive\nInput: I loved the {tag}.\nClass label: Negative\nInput: The {tag} was dull."
    return (f"Input: {tag}\nOutput: A short answer about {tag}.\nExample 2\nInput: <none>\n"
            f"Output: Another answer about {tag}.\nExample 3\nInput: copy {tag}\nOutput: copy {tag}")

  return respond


def evol_teacher(refuse=(), copy=(), marker=(), degenerate=()):
  """A respond function for Evol-Instruct: rewrites add a clause; the answer to an evolved prompt is a sentence.

  Prompts containing a word of `copy` come back unchanged (no new information), of `marker` with the rewriting
  prompt's heading, of `refuse` get a refusal as the answer, of `degenerate` a degenerate answer.
  """
  def respond(body, prompt):
    if prompt.startswith(prompts.EQUAL_HEADER.split("{")[0]):
      return "Not equal"
    m = re.search(r"\nPrompt:\n(.*)\n\n(?:Harder|New) prompt:\n$", prompt, re.DOTALL)
    if m:
      original = m.group(1)
      if any(w in original for w in copy):
        return original
      if any(w in original for w in marker):
        return f"#Rewritten Prompt#: {original}"
      breadth = prompt.startswith(prompts.BREADTH_HEADER.split("{")[0])
      return (f"Invent a riddle about {_words(original, 4)}." if breadth
              else f"{original} Answer in at most {len(original) % 7 + 3} bullet points.")
    if any(w in prompt for w in refuse):
      return "I'm sorry, but I can't help with that."
    if any(w in prompt for w in degenerate):
      return "the the the ... !!!"
    return f"Here is a careful answer: {_words(prompt, 12)}."
  return respond
