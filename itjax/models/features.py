"""How a model family lays out its training rows: which batch arrays it reads and at what lengths.

A family's interface gives a `FeatureLayout`; the data layer turns task examples into these arrays
with the matching seqio feature converter (`itjax.data.feature_converters.converter_for`), and
`itjax compile` shapes its abstract batch from the same layout without reading data. Pure Python:
the data layer imports it without JAX, the train step without TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

PREFIX_LM = "prefix_lm"  # decoder-only: BOS + inputs + targets in one row, loss on targets (seqio PrefixLM)
ENC_DEC = "enc_dec"  # encoder-decoder: inputs (+ EOS) -> encoder, targets -> decoder (seqio EncDec)
KINDS = (PREFIX_LM, ENC_DEC)
PACKERS = ("best_fit", "seqio")  # how packed rows are filled (itjax.data.packing's best fit, or seqio's greedy)
PREFERENCE_IDS = "preference_ids"  # preference rows: 2k+1 on pair k's chosen sequence, 2k+2 on its rejected one

DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
                    "decoder_positions")
ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
PACKING_FEATURES = ("decoder_segment_ids", "decoder_positions", "encoder_segment_ids", "encoder_positions")


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
  """The model features of one family. enc_dec inputs end with `inputs_eos_id` (as T5 was trained)."""

  kind: str
  inputs_eos_id: int | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown feature layout {self.kind!r}; expected one of {KINDS}")
    if self.kind == ENC_DEC and self.inputs_eos_id is None:
      raise ValueError("an enc_dec layout needs inputs_eos_id")

  @property
  def feature_keys(self) -> tuple[str, ...]:
    """The batch arrays the model reads (packed; unpacked batches lack the segment/position arrays)."""
    return DECODER_FEATURES + (ENCODER_FEATURES if self.kind == ENC_DEC else ())

  def task_lengths(self, feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """Lengths to read task examples at: an encoder's inputs keep one token for the EOS appended to them."""
    lengths = dict(feature_lengths)
    if self.kind == ENC_DEC:
      lengths["inputs"] -= 1
    return lengths

  def model_lengths(self, feature_lengths: Mapping[str, int], pack: bool) -> dict[str, int]:
    """Length of each batch array for TASK_FEATURE_LENGTHS `feature_lengths` (seqio's model feature lengths)."""
    if self.kind == PREFIX_LM:
      n = feature_lengths["inputs"] + feature_lengths["targets"]
      lengths = dict.fromkeys(DECODER_FEATURES, n)
    else:
      lengths = {**dict.fromkeys(DECODER_FEATURES, feature_lengths["targets"]),
                 **dict.fromkeys(ENCODER_FEATURES, feature_lengths["inputs"])}
    return {k: v for k, v in lengths.items() if pack or k not in PACKING_FEATURES}


PREFIX_LM_LAYOUT = FeatureLayout(PREFIX_LM)


def preference_lengths(layout: FeatureLayout, feature_lengths: Mapping[str, int]) -> dict[str, int]:
  """Array lengths of a preference batch (`itjax.data.preference`): a row holds whole pairs, each sequence at the
  SFT lengths (prompt <= inputs, response <= targets), so it is twice an SFT row (an encoder-decoder's encoder
  and decoder rows both twice theirs); always packed."""
  lengths = layout.model_lengths({k: 2 * v for k, v in feature_lengths.items()}, pack=True)
  return {**lengths, PREFERENCE_IDS: lengths["decoder_target_tokens"]}
