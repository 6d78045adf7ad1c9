"""Input pipeline throughput and packing efficiency of a mixture: unpacked vs seqio's packer vs best fit.

Prints, for unpacked rows, seqio's greedy packer and the default best-fit packer
(`itjax.data.packing`), the non-padding tokens delivered per second by
`itjax.data.pipeline.train_dataset` and the packing efficiency (non-padding
fraction of the batches), and, given a training run's metrics.jsonl, the ratio of
pipeline to training tokens/s and the fraction of time the loop waited for data. `--dedup_task T`
measures streaming deduplication on one task: examples read and delivered per second with and
without it, and what it dropped.

`--real` measures real text: the P3 pre-templated files in ../shared/data (or $P3_DIR; it says so when
they are absent), tokenized with a SentencePiece and with a tokenizer.json BPE vocabulary (both trained
here, on those files), at FLAN's lengths: 2,048 packed for a decoder, 1,024 + 256 for T5. Packed
tokens/s with tf.data on one thread and on every core. `--resume_at 0,10000,1000000` saves the stream's
state at each position (reading up to it: what a replaying resume would cost) and times a restored
stream's first batch (what a resume costs), with the state's size.

    python benchmarks/data_pipeline.py [--mixture proc_heldout_nli] [--metrics runs/tiny_heldout/metrics.jsonl]
    python benchmarks/data_pipeline.py --real --resume_at 0,10000,1000000
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import absl.logging  # noqa: E402
import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
import tokenizers  # noqa: E402

import itjax_tasks  # noqa: E402,F401
from itjax.data.hf_vocabulary import HFTokenizerVocabulary  # noqa: E402
from itjax.data.pipeline import numpy_batches, train_dataset, train_examples  # noqa: E402
from itjax.data.stream_stats import StreamStats  # noqa: E402
from itjax.models.features import ENC_DEC, PREFIX_LM_LAYOUT, FeatureLayout  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P3_DIR = os.environ.setdefault("P3_DIR", os.path.join(REPO, "../shared/data/p3_templated"))

RUNS = {  # name -> train_dataset keyword arguments
    "unpacked": {"pack": False},
    "seqio packer": {"pack": True, "packer": "seqio"},
    "best-fit packer": {"pack": True, "packer": "best_fit"},
}


def measure(mixture: str, lengths: dict, batch: int, batches: int, stats: StreamStats, **kwargs
            ) -> tuple[float, float, float]:
  """(tokens/s, non-padding fraction, start-up seconds) over `batches` batches after the first."""
  t0 = time.time()
  it = train_dataset(mixture, lengths, batch, seed=0, stats=stats, **kwargs).as_numpy_iterator()
  first = next(it)
  startup = time.time() - t0
  width = first["decoder_target_tokens"].size
  real, t0 = 0, time.time()
  for _ in range(batches):
    real += int(np.sum(next(it)["decoder_target_tokens"] > 0))
  elapsed = time.time() - t0
  return real / elapsed, real / (width * batches), startup


def measure_dedup(task: str, lengths: dict, n: int) -> None:
  """Examples delivered (and read) per second by one task's stream, without and with deduplication."""
  print(f"dedup on {task}, {n} examples delivered:")
  for dedup in (False, True):
    stats = StreamStats()
    it = train_examples(task, lengths, seed=0, dedup=dedup, stats=stats).as_numpy_iterator()
    next(it)
    t0 = time.time()
    for _ in range(n):
      next(it)
    elapsed = time.time() - t0
    c = stats.dedup.get(task)
    extra = (f", {c.examples / elapsed:,.0f} read/s, dropped {c.dropped:,} of {c.examples:,} read "
             f"({c.epochs} passes done)") if c else ""
    print(f"  {'dedup' if dedup else 'plain'}: {n / elapsed:8,.0f} examples/s delivered{extra}")


def p3_mixture() -> str | None:
  """Every P3 task of the walkthrough (gin_configs/examples/p3_tasks.py) as one mixture, rates by size; None
  without the files."""
  if not glob.glob(os.path.join(P3_DIR, "*.jsonl")):
    return None
  spec = importlib.util.spec_from_file_location("p3_tasks", os.path.join(REPO, "gin_configs/examples/p3_tasks.py"))
  p3 = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(p3)
  names = [n for n in p3.names if n.endswith("_noopt")]
  seqio.MixtureRegistry.add("bench_p3", [(n, float(seqio.get_mixture_or_task(n).num_input_examples("train") or 1))
                                         for n in names])
  return "bench_p3"


def p3_texts(limit: int = 40_000) -> list[str]:
  """Up to `limit` prompt + completion texts, the first lines of every P3 file alike."""
  paths = sorted(glob.glob(os.path.join(P3_DIR, "*.jsonl")))
  out = []
  for path in paths:
    with open(path) as f:
      rows = [json.loads(line) for _, line in zip(range(limit // len(paths) + 1), f, strict=False) if line.strip()]
    out += [f"{r['prompt']} {r['completion']}" for r in rows]
  return out[:limit]


def vocabularies(texts: list[str], d: str, size: int = 16_000) -> dict[str, seqio.Vocabulary]:
  """A unigram SentencePiece model (T5's special ids) and a byte-level BPE tokenizer.json, trained on `texts`."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=size,
                                 model_type="unigram", character_coverage=1.0, minloglevel=2, pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1, input_sentence_size=len(texts), shuffle_input_sentence=True)
  sp_path = os.path.join(d, "sp.model")
  with open(sp_path, "wb") as f:
    f.write(model.getvalue())
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(vocab_size=size, special_tokens=["<pad>", "</s>"],
                                                                 initial_alphabet=tokenizers.pre_tokenizers
                                                                 .ByteLevel.alphabet()))
  bpe_path = os.path.join(d, "tokenizer.json")
  bpe.save(bpe_path)
  return {"SentencePiece unigram": seqio.SentencePieceVocabulary(sp_path),
          "tokenizer.json BPE": HFTokenizerVocabulary(bpe_path, pad_token="<pad>", eos_token="</s>")}


def packed_rate(mixture: str, vocab: seqio.Vocabulary, layout, lengths: dict, threads: int | None,
                seconds: float) -> tuple[float, float]:
  """(non-padding tokens/s over about `seconds` after the first batch, efficiency) with tf.data on `threads`."""
  ds = train_dataset(mixture, lengths, 8, seed=0, layout=layout, vocabulary=vocab)
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    ds = ds.with_options(options)
  it = numpy_batches(ds)
  keys = [k for k in ("decoder_target_tokens", "encoder_input_tokens") if k in layout.feature_keys]
  next(it)
  real = cap = 0
  t0 = time.time()
  while time.time() - t0 < seconds:
    b = next(it)
    real += sum(int(np.sum(b[k] > 0)) for k in keys)
    cap += sum(b[k].size for k in keys)
  return real / (time.time() - t0), real / cap


def real_text_table(seconds: float) -> None:
  mixture = p3_mixture()
  if mixture is None:
    print(f"real text: no P3 files in {P3_DIR} (set P3_DIR): skipped")
    return
  n_tasks = len(seqio.get_mixture_or_task(mixture).tasks)
  with tempfile.TemporaryDirectory() as d:
    t0 = time.time()
    vocabs = vocabularies(p3_texts(), d)
    print(f"real text: P3 ({n_tasks} tasks in {P3_DIR}); vocabularies of 16,000 trained in {time.time() - t0:.0f} s; "
          f"{os.cpu_count()} cores")
    print("  | vocabulary | model rows | efficiency | tokens/s, 1 tf.data thread | tokens/s, all cores |")
    print("  |---|---|---|---|---|")
    for vname, vocab in vocabs.items():
      rows = [("decoder, 2,048 packed", PREFIX_LM_LAYOUT, {"inputs": 1536, "targets": 512}),
              ("T5, 1,024 + 256", FeatureLayout(ENC_DEC, inputs_eos_id=vocab.eos_id),
               {"inputs": 1024, "targets": 256})]
      for rname, layout, lengths in rows:
        one, eff = packed_rate(mixture, vocab, layout, lengths, 1, seconds)
        every, _ = packed_rate(mixture, vocab, layout, lengths, None, seconds)
        print(f"  | {vname} | {rname} | {eff:.1%} | {one:,.0f} | {every:,.0f} |", flush=True)


def resume_table(mixture: str, positions: list[int]) -> None:
  """Per position: seconds to read up to it (a replay's cost), state size, seconds from restore to next batch."""
  lengths = {"inputs": 24, "targets": 8}  # small rows, so that a million batches can be read to save a state there

  def stream():
    side: list = []
    return numpy_batches(train_dataset(mixture, lengths, 1, seed=0, side_state=side), None, side)

  print(f"resume: {mixture}, batches of 1 x 32 tokens")
  print("  | position (batches) | reading up to it (replay) | state | restore + first batch |")
  print("  |---|---|---|---|")
  for n in positions:
    a = stream()
    t0 = time.time()
    for _ in range(n):
      next(a)
    replay = time.time() - t0
    blob = a.state()
    want = next(a)
    t0 = time.time()
    b = stream()
    b.restore(blob, "benchmark")
    got = next(b)
    restore = time.time() - t0
    assert all((want[k] == got[k]).all() for k in want), "restored stream differs"
    print(f"  | {n:,} | {replay:,.1f} s | {len(blob) / 1e6:.1f} MB | {restore:.2f} s |", flush=True)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--mixture", default="proc_heldout_nli")
  ap.add_argument("--inputs", type=int, default=96)
  ap.add_argument("--targets", type=int, default=32)
  ap.add_argument("--batch_size", type=int, default=16)
  ap.add_argument("--batches", type=int, default=300)
  ap.add_argument("--metrics", default=None, help="a training run's metrics.jsonl, for the ratio")
  ap.add_argument("--dedup_task", default=None, help="a task to measure streaming deduplication on")
  ap.add_argument("--dedup_examples", type=int, default=3000)
  ap.add_argument("--real", action="store_true", help="the real-text throughput table (P3 files)")
  ap.add_argument("--real_seconds", type=float, default=20.0, help="seconds measured per real-text cell")
  ap.add_argument("--resume_at", default=None, help="comma-separated positions to time resuming at")
  args = ap.parse_args()
  absl.logging.set_verbosity(absl.logging.ERROR)
  if args.real or args.resume_at:
    if args.real:
      real_text_table(args.real_seconds)
    if args.resume_at:
      resume_table(p3_mixture() or args.mixture, [int(x) for x in args.resume_at.split(",")])
    return
  lengths = {"inputs": args.inputs, "targets": args.targets}
  print(f"mixture {args.mixture}, lengths {lengths}, batch {args.batch_size}, {args.batches} batches")
  results = {}
  for name, kwargs in RUNS.items():
    tps, eff, startup = measure(args.mixture, lengths, args.batch_size, args.batches, StreamStats(), **kwargs)
    results[name] = tps
    print(f"  {name:<16}: {tps:10,.0f} non-padding tokens/s   efficiency {eff:6.1%}   "
          f"first batch after {startup:.1f} s")
  if args.dedup_task:
    measure_dedup(args.dedup_task, lengths, args.dedup_examples)
  if args.metrics:
    with open(args.metrics) as f:
      rows = [json.loads(line) for line in f]
    train_tps = float(np.median([r["tokens_per_s"] for r in rows[1:]] or [rows[0]["tokens_per_s"]]))
    print(f"  training step (median of {args.metrics}): {train_tps:,.0f} tokens/s -> pipeline/train ratio "
          f"{results['best-fit packer'] / train_tps:.1f}x (best fit)")
    waits = [r["data_wait_fraction"] for r in rows[1:] if "data_wait_fraction" in r]
    if waits:
      print(f"  the training loop waited for data {float(np.median(waits)):.2%} of its time (median of "
            f"{len(waits)} windows, max {max(waits):.2%})")


if __name__ == "__main__":
  main()
