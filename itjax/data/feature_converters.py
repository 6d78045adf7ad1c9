"""The feature converters of every training stream: seqio's, plus chat loss masks and best-fit packing.

`PrefixLMConverter` (decoder-only) is seqio's PrefixLMFeatureConverter with two additions:
examples that carry `chat.LOSS_MASK` (chat conversations) get `decoder_loss_weights` of 1 on
exactly their assistant turns (the mask inside inputs, and all of targets); and with
`packer="best_fit"` rows are packed by `itjax.data.packing` instead of seqio's greedy packer. A
stream without LOSS_MASK converts exactly as seqio's converter does, token for token.

`EncDecConverter` is seqio's EncDecFeatureConverter with the same packer choice and EOS appended
to every encoder input (as T5 and Flan-T5 were trained; our tasks' inputs carry no EOS, which a
decoder-only row must not have mid-row): read tasks at the layout's `task_lengths` so that inputs
leave room for it. Chat examples become one example per assistant turn first (`chat.one_example_per_turn`).

Both keep seqio's packed layout (segment ids 1, 2, ... per example, positions restarting at 0,
padding 0), so the models' packing masks apply unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

from itjax.data import chat, packing
from itjax.data.stream_stats import StreamStats
from itjax.errors import UserError
from itjax.models.features import ENC_DEC, PACKERS, FeatureLayout

_MASK = "loss_mask"  # concatenated [inputs mask, targets ones], stored +1 so seqio's packer sees no zeros


def check_packer(packer: str) -> str:
  if packer not in PACKERS:
    raise UserError(f"unknown packer {packer!r} (choose from {', '.join(PACKERS)})")
  return packer


class _Packing:
  """The `_pack_or_pad` both converters share: seqio's trim-and-pad, seqio's packer or best fit."""

  pack: bool
  _packer: str
  _stats: StreamStats | None

  def _pack_or_pad(self, ds: tf.data.Dataset, packed_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if self.pack and self._packer == "best_fit":
      return packing.pack_dataset(ds, packed_lengths, stats=self._stats.packing if self._stats else None)
    return super()._pack_or_pad(ds, packed_lengths)


class PrefixLMConverter(_Packing, seqio.PrefixLMFeatureConverter):
  """Decoder-only features: BOS + inputs + targets per row; loss on targets and on chat assistant turns."""

  def __init__(self, pack: bool = True, *, packer: str = "best_fit", stats: StreamStats | None = None, **kwargs):
    self._packer, self._stats, self._chat = check_packer(packer), stats, False
    super().__init__(pack=pack, **kwargs)

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    self._chat = chat.LOSS_MASK in ds.element_spec
    return super()._convert_features(ds, task_feature_lengths)

  def _concat_and_add_masks(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._concat_and_add_masks(features))
    if self._chat:
      num_inputs = tf.size(features["inputs"])
      mask = tf.concat([tf.cast(features[chat.LOSS_MASK], tf.int32), tf.ones([tf.size(d["targets"]) - num_inputs],
                                                                               tf.int32)], 0)
      d[_MASK] = mask + 1
    return d

  def _concat_task_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = dict(super()._concat_task_feature_lengths(task_feature_lengths))
    if self._chat:
      lengths[_MASK] = lengths["targets"]
    return lengths

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    if _MASK in features:  # 2 = loss, 1 = context, 0 = padding
      d["decoder_loss_weights"] = tf.cast(tf.equal(features[_MASK], 2), d["decoder_loss_weights"].dtype)
    return d


class EncDecConverter(_Packing, seqio.EncDecFeatureConverter):
  """Encoder-decoder features (inputs and targets packed jointly); chat: one example per assistant turn."""

  def __init__(self, pack: bool = True, *, packer: str = "best_fit", stats: StreamStats | None = None,
               inputs_eos_id: int = 1, **kwargs):
    self._packer, self._stats, self._eos = check_packer(packer), stats, inputs_eos_id
    super().__init__(pack=pack, **kwargs)

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    ds = self._with_eos(self._per_turn(ds, task_feature_lengths), task_feature_lengths["inputs"])
    return super()._convert_features(ds, task_feature_lengths)

  def _with_eos(self, ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    """Inputs + EOS, trimmed to `length` keeping the EOS (a no-op trim for inputs read at `task_lengths`)."""
    eos = tf.constant([self._eos], tf.int32)

    def add(ex):
      return {**ex, "inputs": tf.concat([tf.cast(ex["inputs"][:length - 1], tf.int32), eos], 0)}

    return ds.map(add, num_parallel_calls=tf.data.AUTOTUNE)

  def _per_turn(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if chat.LOSS_MASK in ds.element_spec:
      count = None
      if self._stats is not None:
        stats = self._stats

        def count(c):
          return stats.add({"enc_dec_turn_examples": c["examples"], "enc_dec_turn_tokens_cut": c["tokens_cut"]})

      ds = chat.one_example_per_turn(ds, task_feature_lengths["targets"], count)
    return ds


def converter_for(layout: FeatureLayout, pack: bool, *, packer: str = "best_fit",
                  stats: StreamStats | None = None) -> seqio.FeatureConverter:
  """The converter that gives a model family's features (`layout`, from its interface): EncDec (EOS
  `layout.inputs_eos_id` ending the encoder inputs) or PrefixLM (see the module docstring)."""
  if layout.kind == ENC_DEC:
    return EncDecConverter(pack=pack, packer=packer, stats=stats, inputs_eos_id=layout.inputs_eos_id)
  return PrefixLMConverter(pack=pack, packer=packer, stats=stats)
