"""Training batches: seqio mixture -> packed model features -> numpy, per host.

Decoder-only models get seqio's PrefixLM features (BOS + inputs + targets in one
row, loss on the targets); encoder-decoders its EncDec features (inputs and
targets packed side by side, with segment ids and positions on both).

The stream is deterministic given the seed and the host's shard, so its
position is just the number of batches consumed: a resumed run skips that
many and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from itjax.data.quality import NgramIndex  # noqa: E402

# Features the trainer consumes (decoder_causal_attention is for bidirectional prefix LMs; ours are causal).
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
                    "decoder_positions")
ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")


def feature_converter(encoder_decoder: bool, pack: bool) -> seqio.FeatureConverter:
  """seqio's converter for the architecture: EncDec, or PrefixLM for decoder-only."""
  return seqio.EncDecFeatureConverter(pack=pack) if encoder_decoder else seqio.PrefixLMFeatureConverter(pack=pack)


def train_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                  seed: int, shard_index: int = 0, num_shards: int = 1, pack: bool = True,
                  start_batch: int = 0, use_cached: bool = False,
                  decontaminate: NgramIndex | None = None, encoder_decoder: bool = False) -> tf.data.Dataset:
  """This host's infinite stream of [batch_size, length] batches, from batch `start_batch` on.

  With `decontaminate`, examples sharing an n-gram with the indexed eval data
  are dropped before packing (`itjax.data.quality.scan` counts them).
  """
  tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators that JAX owns
  lengths = dict(task_feature_lengths)
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  ds = provider.get_dataset(lengths, split="train", shuffle=True, num_epochs=None, seed=seed, use_cached=use_cached,
                            shard_info=seqio.ShardInfo(shard_index, num_shards))
  if decontaminate is not None:
    vocab = provider.output_features["targets"].vocabulary

    def clean(ex):
      text = tf.strings.join([vocab.decode_tf(ex["inputs"]), "\n", vocab.decode_tf(ex["targets"])])
      return tf.logical_not(decontaminate.tf_contaminated(text))

    ds = ds.filter(clean)
  ds = feature_converter(encoder_decoder, pack)(ds, lengths)
  keep = DECODER_FEATURES + (ENCODER_FEATURES if encoder_decoder else ())
  ds = ds.map(lambda ex: {k: ex[k] for k in keep if k in ex})
  ds = ds.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).skip(start_batch).prefetch(4)


def numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  return ds.as_numpy_iterator()
