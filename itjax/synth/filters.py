"""Filters for generated instruction data: each check returns a reason (a short name that reports count) or None.

Instruction filters follow Self-Instruct (length, keyword blacklist, invalid starts, ROUGE-L > 0.7 against the
pool); instance filters follow its post-processing; response filters follow Evol-Instruct's elimination
(refusals, degenerate outputs, copied prompt markers, no new information).

Too short to be an answer ("too_short"): fewer than `MIN_ANSWER_CHARS` (2) letters and digits, e.g. "x" or "A.",
unless the answer is a number ("7", "-3.5", "40%"), a class label (Self-Instruct's classification instances), or
the instruction asks for a short answer (`expects_short_answer`: it offers options or a choice, asks yes/no or
true/false, to classify, label or rate, for a letter, a number or one word, or "how many"). Where a short answer
is expected, one of at most `SHORT_ANSWER_WORDS` words made only of stop words ("Yes", "No") is kept too.

ROUGE-L uses rouge-score's tokenization (lowercased alphanumeric words, no stemming) and a bit-parallel LCS, so a
candidate is compared with thousands of pool entries quickly; `tests/synth` checks it agrees with rouge-score.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence

from rouge_score import tokenizers

from itjax.data.quality import normalize

# Self-Instruct's blacklist: tasks a text-only model cannot do (or that need files, media or the web).
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
INVALID_PREFIXES = ("write a program", "write a code", "write code")
# Phrases of the teacher's own prompt that must not leak into an evolved instruction (Evol-Instruct rule 4).
PROMPT_MARKERS = ("#the given prompt#", "#rewritten prompt#", "#created prompt#", "given prompt", "rewritten prompt",
                  "created prompt", "original prompt", "inspiration prompt", "new prompt:")
# Markers of the instance-generation prompts; an instance holding one copied the prompt's structure.
INSTANCE_MARKERS = re.compile(r"^\s*(task:|example \d+|class label:|input:|output:)", re.IGNORECASE | re.MULTILINE)
REFUSALS = ("sorry", "i cannot", "i can't", "i can not", "i am unable", "i'm unable", "as an ai", "i apologize",
            "i am not able", "i'm not able")
STOP_WORDS = frozenset(
    "a an the and or but if then of to in on at by for with from as is are was were be been it its this that these "
    "those i you he she we they me him her us them my your his our their not no yes so do does did have has had "
    "will would can could should may might must what which who whom when where why how there here".split())

MIN_ANSWER_CHARS = 2
SHORT_ANSWER_WORDS = 3
_NUMBER = re.compile(r"[-+]?(\d+([.,]\d+)*|[.,]\d+)%?")
# Instructions that plausibly ask for a one-token answer: a choice among options, a label, a count, a yes/no.
SHORT_ANSWER_CUES = re.compile(
    r"\b(yes or no|yes/no|true or false|true/false|choose|select|pick|which (one|of)|options?|choices?|"
    r"classify|classification|categori[sz]e|category|label|sentiment|rate|rating|on a scale|score|how many|"
    r"how much|what number|count|one word|single word|one letter|single letter|which letter|digit|a number|"
    r"answer with)\b|^\s*\(?[a-d][).:]\s", re.IGNORECASE | re.MULTILINE)

_tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)


def rouge_tokens(text: str) -> list[str]:
  """rouge-score's tokenization (lowercase, non-alphanumerics dropped), as RougeScorer(['rougeL']) sees text."""
  return _tokenizer.tokenize(text)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int operations."""
  if not a or not b:
    return 0
  masks: dict[str, int] = {}
  for i, tok in enumerate(a):
    masks[tok] = masks.get(tok, 0) | (1 << i)
  full = (1 << len(a)) - 1
  v = full
  for tok in b:
    u = v & masks.get(tok, 0)
    v = ((v + u) | (v - u)) & full
  return len(a) - v.bit_count()


def rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> float:
  """ROUGE-L F1 of two token lists (rouge-score's fmeasure)."""
  lcs = lcs_length(reference, candidate)
  if lcs == 0:
    return 0.0
  p, r = lcs / len(candidate), lcs / len(reference)
  return 2 * p * r / (p + r)


class RougePool:
  """Instructions kept so far, tokenized once; `most_similar` is the highest ROUGE-L F1 of a text against them."""

  def __init__(self, texts: Iterable[str] = ()):
    self._lock = threading.Lock()
    self._entries: list[tuple[list[str], dict[str, int], str]] = []
    for t in texts:
      self.add(t)

  def __len__(self) -> int:
    return len(self._entries)

  def add(self, text: str) -> None:
    toks = rouge_tokens(text)
    masks: dict[str, int] = {}
    for i, tok in enumerate(toks):
      masks[tok] = masks.get(tok, 0) | (1 << i)
    with self._lock:
      self._entries.append((toks, masks, text))

  def most_similar(self, text: str) -> tuple[float, str | None]:
    """(best ROUGE-L F1, the pool text reaching it); (0.0, None) for an empty pool or text."""
    cand = rouge_tokens(text)
    best, best_text = 0.0, None
    if not cand:
      return best, best_text
    with self._lock:
      entries = list(self._entries)
    for toks, masks, ref in entries:
      if not toks:
        continue
      full = (1 << len(toks)) - 1
      v = full
      for tok in cand:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
      lcs = len(toks) - v.bit_count()
      if lcs:
        p, r = lcs / len(cand), lcs / len(toks)
        f = 2 * p * r / (p + r)
        if f > best:
          best, best_text = f, ref
    return best, best_text


# --- instructions ---------------------------------------------------------------------------------------------------
def instruction_reason(text: str, *, min_words: int = 3, max_words: int = 150,
                       blacklist: Sequence[str] = BLACKLIST) -> str | None:
  """Why a generated instruction is unusable on its own (before the similarity check), or None."""
  t = text.strip()
  if not t:
    return "empty"
  words = t.split()
  if len(words) < min_words:
    return "too_short"
  if len(words) > max_words:
    return "too_long"
  low = t.lower()
  if any(re.search(rf"\b{re.escape(k)}\b", low) for k in blacklist):
    return "blacklist"
  if low.startswith(INVALID_PREFIXES):
    return "invalid_start"
  if not t[0].isascii() or not t[0].isalnum():  # punctuation, or not English
    return "invalid_start"
  if any(m in low for m in PROMPT_MARKERS):
    return "copied_marker"
  return None


def similar_reason(text: str, pool: RougePool, threshold: float = 0.7) -> str | None:
  """"similar" when ROUGE-L F1 against some pool instruction exceeds `threshold` (Self-Instruct: 0.7)."""
  return "similar" if pool.most_similar(text)[0] > threshold else None


# --- instances ------------------------------------------------------------------------------------------------------
def instance_reasons(instances: Sequence[tuple[str, str]], *, max_output_words: int = 400,
                     max_input_words: int = 400, instruction: str = "", labels: bool = False) -> list[str | None]:
  """A reason (or None) for each (input, output) instance of one instruction.

  Drops empty outputs, outputs too short to be an answer (`too_short`; `labels`: the outputs are class labels,
  which may be one character), outputs equal to the input, over-long fields, copied prompt markers, exact
  duplicates and every instance of an input that got conflicting outputs (Self-Instruct's consistency rule).
  """
  reasons: list[str | None] = []
  outputs_by_input: dict[str, set[str]] = {}
  for inp, out in instances:
    outputs_by_input.setdefault(normalize(inp), set()).add(normalize(out))
  seen: set[tuple[str, str]] = set()
  for inp, out in instances:
    key = (normalize(inp), normalize(out))
    if not out.strip():
      reasons.append("empty_output")
    elif too_short(out, f"{instruction}\n{inp}", label=labels):
      reasons.append("too_short")
    elif inp.strip() and key[0] == key[1]:
      reasons.append("same_as_input")
    elif len(out.split()) > max_output_words or len(inp.split()) > max_input_words:
      reasons.append("too_long")
    elif INSTANCE_MARKERS.search(inp) or INSTANCE_MARKERS.search(out):
      reasons.append("copied_marker")
    elif key in seen:
      reasons.append("duplicate")
    elif len(outputs_by_input[key[0]]) > 1 and key[0]:
      reasons.append("conflicting_outputs")
    else:
      reasons.append(None)
    seen.add(key)
  return reasons


# --- teacher responses (Evol-Instruct elimination, distillation) ----------------------------------------------------
def is_refusal(response: str, max_words: int = 80) -> bool:
  """A short answer that apologizes or declines (Evol-Instruct: contains "sorry" and is under 80 words)."""
  low = response.lower()
  return len(response.split()) < max_words and any(r in low for r in REFUSALS)


def expects_short_answer(instruction: str) -> bool:
  """The instruction plausibly asks for a one-token answer (a choice, a label, a count, yes/no; SHORT_ANSWER_CUES)."""
  return bool(instruction) and SHORT_ANSWER_CUES.search(instruction) is not None


def too_short(response: str, instruction: str = "", *, label: bool = False) -> bool:
  """Fewer than MIN_ANSWER_CHARS letters and digits, unless a number, a class label (`label`) or an answer to an
  instruction that expects a short one (see the module docstring)."""
  core = re.sub(r"[\W_]", "", response)
  if not core:
    return False  # empty, or punctuation only: "empty" / "degenerate"
  if len(core) >= MIN_ANSWER_CHARS:
    return False
  return not (label or _NUMBER.fullmatch(response.strip().rstrip(".")) or expects_short_answer(instruction))


def is_degenerate(response: str, instruction: str = "", *, label: bool = False) -> bool:
  """Nothing to learn: empty, too short to be an answer (`too_short`), only punctuation and stop words (unless a
  short answer such as "Yes" to an instruction that expects one), or a loop repeating the same few words."""
  words = re.findall(r"[^\W_]+", response.lower())
  if not words or too_short(response, instruction, label=label):
    return True
  short_ok = label or expects_short_answer(instruction)
  if not [w for w in words if w not in STOP_WORDS] and not (short_ok and len(words) <= SHORT_ANSWER_WORDS):
    return True
  if len(words) >= 30:
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    if len(set(trigrams)) / len(trigrams) < 0.2:
      return True
  return False


def response_reason(response: str, finish_reason: str | None = None, *, drop_truncated: bool = True,
                    instruction: str = "") -> str | None:
  """Why a teacher's answer to `instruction` is unusable as a training target, or None."""
  if not response.strip():
    return "empty"
  if drop_truncated and finish_reason == "length":
    return "truncated"
  if is_refusal(response):
    return "refusal"
  if too_short(response, instruction):
    return "too_short"
  if is_degenerate(response, instruction):
    return "degenerate"
  return None


def copied_marker(text: str) -> bool:
  """Evol-Instruct rule 4: the evolved prompt quotes the rewriting prompt's own markers."""
  low = text.lower()
  return any(m in low for m in PROMPT_MARKERS)


def no_new_information(evolved: str, original: str, threshold: float = 0.9) -> bool:
  """The evolved prompt adds nothing: the same text after normalization, or a near copy (ROUGE-L F1 >= 0.9)
  that is not longer than the original."""
  if normalize(evolved) == normalize(original):
    return True
  a, b = rouge_tokens(evolved), rouge_tokens(original)
  return bool(a and b) and len(a) <= len(b) and rouge_l(a, b) >= threshold
