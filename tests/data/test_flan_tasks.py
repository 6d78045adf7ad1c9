"""FLAN tasks: every task renders TFDS mock data; exact answers on hand-made rows; held-out mixtures; lazy import.

TFDS mock data (`tfds.testing.mock_data`, code-only policy: no metadata files or downloads) generates random
examples from each builder's feature spec. A few fields are then made realistic (`_realistic`): random values
cannot satisfy constraints such as "the label is 1 or 2" (StoryCloze) or "the query has an @placeholder"
(ReCoRD), and the preprocessors rightly drop rows that violate them. Every builder mocks offline this way; none
needs a hand-made stand-in. Mocked builders know no split sizes, so `LazyTfdsLoader.size` (only used to decide
on in-memory caching) is patched to report none.
"""

import contextlib
import re
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

import itjax_tasks.flan as flan
from itjax.data.mixtures import heldout_split
from itjax.data.tasks import task_info

LENGTHS = {"inputs": 512, "targets": 128}
NUM_EXAMPLES = 2
UNFILLED = re.compile(r"\{[A-Za-z_0-9]*\}")

# FLAN's clusters, written out independently of the task modules; secondary clusters below.
CLUSTERS = {
    "nli": "anli_r1 anli_r2 anli_r3 cb mnli qnli rte snli wnli",
    "commonsense": "copa hellaswag piqa story_cloze",
    "sentiment": "imdb sentiment140 sst2 yelp",
    "paraphrase": "mrpc qqp paws_wiki stsb",
    "closed_book_qa": "arc_easy arc_challenge natural_questions trivia_qa",
    "struct_to_text": "common_gen dart e2e_nlg web_nlg",
    "translation": "para_crawl_enes wmt14_enfr wmt16_encs wmt16_ende wmt16_enfi wmt16_enro wmt16_enru wmt16_entr",
    "reading_comp": "boolq drop multirc openbookqa squad_v1 squad_v2",
    "rc_commonsense": "cosmos_qa record",
    "coreference": "dpr winogrande wsc273 wsc",
    "summarization": "aeslc ag_news cnn_dailymail gigaword multi_news newsroom opinion_abstracts_rotten_tomatoes "
                     "opinion_abstracts_idebate samsum wiki_lingua xsum",
    "misc": "coqa quac trec cola wic math fix_punct",
}
SECONDARY = {**{d: ("nli",) for d in CLUSTERS["paraphrase"].split()}, "cosmos_qa": ("reading_comp",),
             "record": ("commonsense",)}
EXPECTED = {f"flan_{d}": (c, *SECONDARY.get(d, ())) for c, ds in CLUSTERS.items() for d in ds.split()}
# One task per dataset (with options where it has them): the quick subset of the exhaustive mock test.
QUICK = sorted({task_info(n).dataset: n for n in sorted(flan.TASKS)}.values())


def _realistic(builder, ex: dict, i: int) -> dict:
  """Mock example i of `builder` with the fields random values cannot get right fixed up."""
  name, config = builder.name, builder.builder_config.name if builder.builder_config else ""
  if name == "para_crawl":
    ex["en"] = ex["en"] + ", with punctuation."
  elif name == "story_cloze":
    ex["label"] = 1 + i % 2
  elif name == "sentiment140":
    ex["polarity"] = 4 * (i % 2)
  elif name == "hellaswag":
    ex["label"] = i % len(ex["endings"])
  elif name == "ai2_arc":
    ex["answerKey"] = ex["choices"]["label"][i % len(ex["choices"]["label"])]
  elif name == "winogrande":
    ex["sentence"] = f"{ex['option1']} and {ex['option2']} met, so _ left."
  elif name == "wsc273":
    ex["text"], ex["pronoun_start"], ex["pronoun_end"], ex["label"] = "Ann saw Bo; she waved.", 12, 15, i % 2
  elif name in ("dart", "e2e_cleaned", "web_nlg"):  # table cells: one header and one content per cell
    table = ex["input_text"]["table"]
    n = min(len(v) for v in table.values())
    ex["input_text"]["table"] = {k: v[:n] for k, v in table.items()}
  elif name == "super_glue" and config == "record":
    ex["query"] = f"{ex['query']} @placeholder said."
    ex["answers"] = ex["entities"][:1]
  return ex


def _mock_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
  """`FileReaderBuilder._as_dataset` under the mock: random examples per the builder's features, made realistic."""
  del split, decoders, read_config, shuffle_files, kwargs
  features = self.info.features
  rows = [_realistic(self, ex, i) for i, ex in enumerate(mocking.RandomFakeGenerator(features, NUM_EXAMPLES, 1, 2))]
  spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.tf_dtype), features.get_tensor_info())
  return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=spec)


@contextlib.contextmanager
def _mocked_tfds(as_dataset_fn=_mock_as_dataset):
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset_fn), \
       mock.patch.object(seqio.utils.LazyTfdsLoader, "size", return_value=None):
    yield


@pytest.fixture(scope="module")
def mocked():
  with _mocked_tfds():
    yield


def _rendered(name: str, split: str = "validation") -> list[dict]:
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  options = tf.data.Options()  # a handful of rows: skip tf.data's graph optimizations (halves the time)
  options.experimental_optimization.apply_default_optimizations = False
  options.autotune.enabled = False
  return list(ds.with_options(options).as_numpy_iterator())


def _check_task(name: str) -> None:
  info = task_info(name)
  assert info.clusters == EXPECTED[info.dataset]
  rows = _rendered(name)
  # Every mock example survives preprocessing and is rendered with every forward template.
  assert len(rows) == NUM_EXAMPLES * info.eval_templates
  for r in rows:
    inputs, targets, answer = (r[k].decode() for k in ("inputs_pretokenized", "targets_pretokenized", "answer"))
    assert inputs.strip() and not UNFILLED.search(inputs), inputs
    assert targets.strip() and targets == answer  # eval renders forward templates: the target is the answer
    assert r["cluster"].decode() == info.cluster and r["task"].decode() == name
    options = [o.decode() for o in r["options"]]
    if info.has_options:
      assert answer in options
      assert ("OPTIONS:" in inputs) == (info.variant == "zs_opt")
    else:
      assert not options and "OPTIONS:" not in inputs


def test_every_dataset_is_registered_under_its_flan_clusters():
  assert {task_info(n).dataset for n in flan.TASKS} == set(EXPECTED)
  assert len(EXPECTED) == 67 and len(flan.TASKS) == len(set(flan.TASKS))
  for name in flan.TASKS:
    info = task_info(name)
    assert info.clusters == EXPECTED[info.dataset] and 7 <= info.num_templates <= 11
    assert info.num_templates - info.eval_templates <= 3  # at most 3 turned-around templates
    assert set(seqio.get_mixture_or_task(name).splits) >= {"train", "validation"}


@pytest.mark.parametrize("name", QUICK)
def test_task_renders_mock_data(name, mocked):
  _check_task(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(flan.TASKS) - set(QUICK)))
def test_other_variants_render_mock_data(name, mocked):
  _check_task(name)


def test_train_split_renders_one_template_per_example(mocked):
  rows = _rendered("flan_mnli_zs_opt", split="train")
  assert len(rows) == NUM_EXAMPLES and all(0 <= r["template_id"] < task_info("flan_mnli_zs_opt").num_templates
                                           for r in rows)


# --- exact answers from hand-made raw examples ------------------------------------------------------------------
def _fields(name: str, raw: dict) -> dict | None:
  """The task's raw-feature preprocessing of one hand-made example (None when it drops it)."""
  ds = tf.data.Dataset.from_tensors({**raw, "split": "validation"})
  out = list(seqio.get_mixture_or_task(name).preprocessors[0](ds).as_numpy_iterator())
  assert len(out) <= 1
  return {k: v.decode() if isinstance(v, bytes) else [o.decode() for o in v] for k, v in out[0].items()} \
      if out else None


def test_mnli_labels_map_to_flan_options():
  raw = {"premise": "A man sleeps.", "hypothesis": "A person rests.", "idx": 0}
  answers = [_fields("flan_mnli_zs_opt", {**raw, "label": label})["answer"] for label in (0, 1, 2)]
  assert answers == ["yes", "it is not possible to tell", "no"]
  assert _fields("flan_mnli_zs_opt", {**raw, "label": -1}) is None  # unlabeled (test) rows are dropped
  # CB orders its labels differently (entailment, contradiction, neutral).
  assert _fields("flan_cb_zs_opt", {**raw, "label": 2})["answer"] == "It's impossible to say"
  assert _fields("flan_wnli_zs_opt", {"sentence1": "a", "sentence2": "b", "idx": 0, "label": 1})["answer"] == "yes"


def test_mnli_renders_exactly_through_the_whole_task():
  def as_dataset(self, **kwargs):
    return tf.data.Dataset.from_tensors({"premise": "A man sleeps.", "hypothesis": "A person rests.",
                                         "label": tf.constant(0, tf.int64), "idx": 7})

  with _mocked_tfds(as_dataset):
    rows = _rendered("flan_mnli_zs_opt")
  assert rows[0]["inputs_pretokenized"].decode() == (
      "Premise: A man sleeps.\nHypothesis: A person rests.\n\nDoes the premise entail the hypothesis?\n\n"
      "OPTIONS:\n- yes\n- it is not possible to tell\n- no\n")
  assert rows[0]["targets_pretokenized"] == b"yes" and rows[0]["cluster"] == b"nli"


def test_copa_answer_is_the_labeled_choice():
  raw = {"premise": "The man broke his toe.", "question": "cause", "choice1": "He dropped a hammer on his foot.",
         "choice2": "He got a hole in his sock.", "idx": 0, "label": 0}
  out = _fields("flan_copa_zs_opt", raw)
  assert out["answer"] == "He dropped a hammer on his foot." and out["options"] == [raw["choice1"], raw["choice2"]]
  assert out["ask"] == "What was the cause of this?"
  out = _fields("flan_copa_zs_opt", {**raw, "question": "effect", "label": 1})
  assert out["answer"] == "He got a hole in his sock." and out["ask"] == "What happened as a result?"


def test_squad_answers():
  raw = {"id": "1", "title": "Super_Bowl_50", "context": "Denver won.", "question": "Who won?",
         "answers": {"text": ["Denver", "Denver Broncos"], "answer_start": [0, 0]}}
  out = _fields("flan_squad_v1_zs_noopt", raw)
  assert (out["answer"], out["title"], out["passage"]) == ("Denver", "Super Bowl 50", "Denver won.")
  v2 = {**raw, "is_impossible": True, "answers": {"text": tf.constant([], tf.string),
                                                  "answer_start": tf.constant([], tf.int32)},
        "plausible_answers": raw["answers"]}
  assert _fields("flan_squad_v2_zs_noopt", v2)["answer"] == "unanswerable"


def test_multiple_choice_and_cloze_datasets():
  arc = {"id": "q", "question": "What melts ice?", "answerKey": 2,
         "choices": {"text": ["cold", "wind", "heat"], "label": [0, 1, 2]}}
  assert _fields("flan_arc_easy_zs_opt", arc)["answer"] == "heat"
  story = {"context": "Ann was hungry.", "endings": ["She ate.", "She slept."], "label": 2}
  assert _fields("flan_story_cloze_zs_opt", story)["answer"] == "She slept."
  assert _fields("flan_story_cloze_zs_opt", {**story, "label": -1}) is None
  wino = {"sentence": "The cup fell off the shelf because _ was slippery.", "option1": "the cup",
          "option2": "the shelf", "label": 1}
  out = _fields("flan_winogrande_zs_opt", wino)
  assert out["context"] == "The cup fell off the shelf because"
  assert out["options"] == ["the cup was slippery.", "the shelf was slippery."]
  assert out["answer"] == "the shelf was slippery."
  text = "The trophy doesn't fit in the case because it is too big."
  start = text.index(" it ") + 1
  wsc = {"text": text, "pronoun_start": start, "pronoun_end": start + 2, "pronoun_text": "it",
         "option1": "The trophy", "option1_normalized": "the trophy",
         "option2": "The case", "option2_normalized": "the case", "label": 0, "idx": 0}
  out = _fields("flan_wsc273_zs_opt", wsc)
  assert out["context"] == "The trophy doesn't fit in the case because"
  assert out["answer"] == "the trophy is too big."
  record = {"passage": "Bo met Ann.\n@highlight\nThey talked", "query": "@placeholder smiled.",
            "entities": ["Bo", "Ann", "Bo"], "answers": ["Ann"], "idx": {"passage": 0, "query": 0}}
  out = _fields("flan_record_zs_opt", record)
  assert (out["query"], out["filled"], out["answer"]) == ("_____ smiled.", "Ann smiled.", "Ann")
  assert out["options"] == ["Bo", "Ann"] and out["passage"] == "Bo met Ann.\n- They talked"


def test_sentiment140_drops_neutral_tweets_and_counts_them():
  from itjax.data.skips import skip_counts
  from itjax_tasks.flan._common import SKIP_FILTERED

  def skipped():
    return skip_counts([seqio.get_mixture_or_task("flan_sentiment140_zs_opt")]).get("flan_sentiment140", {}).get(
        SKIP_FILTERED, 0)

  raw = {"text": "great day", "date": "", "query": "", "user": ""}
  before = skipped()
  assert _fields("flan_sentiment140_zs_opt", {**raw, "polarity": 4})["answer"] == "positive"
  assert _fields("flan_sentiment140_zs_opt", {**raw, "polarity": 0})["answer"] == "negative"
  assert skipped() == before
  assert _fields("flan_sentiment140_zs_opt", {**raw, "polarity": 2}) is None
  assert _fields("flan_sentiment140_zs_opt", {**raw, "polarity": 2}) is None
  assert skipped() == before + 2  # never silently: counted under the dataset and the filter's reason


def test_generation_datasets_build_their_fields():
  table = {"column_header": ["subject", "predicate", "object", "subject", "predicate", "object"],
           "content": ["[TABLECONTEXT]", "[TITLE]", "1996 Games", "[TABLECONTEXT]", "host city", "Atlanta"],
           "row_number": tf.constant([0, 0, 0, 1, 1, 1], tf.int16)}
  out = _fields("flan_dart_zs_noopt", {"input_text": {"table": table}, "target_text": "The 1996 Games were held."})
  assert out["data"] == "1996 Games; host city | Atlanta"
  e2e = {"column_header": ["name", "food"], "content": ["The Eagle", "French"], "row_number": tf.constant([1, 1],
                                                                                                         tf.int16)}
  out = _fields("flan_e2e_nlg_zs_noopt", {"input_text": {"table": e2e}, "target_text": "The Eagle serves food."})
  assert out["data"] == "name = The Eagle, food = French"
  out = _fields("flan_wmt16_ende_zs_noopt", {"de": "Hallo Welt", "en": "Hello world"})
  assert (out["english"], out["language"], out["answer"]) == ("Hello world", "German", "Hallo Welt")
  coqa = {"story": "Bo ran.", "source": "x", "questions": ["Who ran?", "Did he?"],
          "answers": {"input_text": ["Bo", "yes"], "answer_start": [0, 0], "answer_end": [1, 1]}}
  out = _fields("flan_coqa_zs_noopt", coqa)
  assert (out["questions"], out["answer"]) == ("1. Who ran?\n2. Did he?", "1. Bo\n2. yes")
  assert _fields("flan_fix_punct_zs_noopt", {"en": "Hi, Bo!", "da": "Hej, Bo!"})["text"] == "Hi Bo"
  assert _fields("flan_stsb_zs_opt", {"sentence1": "a", "sentence2": "b", "label": 3.6, "idx": 0})["answer"] == "4"


# --- held-out mixtures --------------------------------------------------------------------------------------------
def _datasets(mixture: str) -> set[str]:
  return {t.info.dataset for t in seqio.get_mixture_or_task(mixture).tasks}


def _flan(cluster: str) -> set[str]:
  return {f"flan_{d}" for d in CLUSTERS[cluster].split()}


def test_every_cluster_has_heldout_mixtures():
  for cluster in CLUSTERS:
    assert _datasets(f"flan_heldout_{cluster}_eval") == _flan(cluster)
    assert _datasets(f"flan_heldout_{cluster}") and not _datasets(f"flan_heldout_{cluster}") & _flan(cluster)


def test_heldout_nli_excludes_nli_and_paraphrase():
  train = _datasets("flan_heldout_nli")
  assert not train & (_flan("nli") | _flan("paraphrase"))
  assert train == set(EXPECTED) - _flan("nli") - _flan("paraphrase")
  assert not _datasets("flan_heldout_paraphrase") & _flan("nli")
  assert all(t.name.endswith("_zs_opt") for t in seqio.get_mixture_or_task("flan_heldout_nli_eval").tasks)


def test_heldout_reading_comp_and_commonsense_follow_flan_rules():
  rc, cs, rccs = _flan("reading_comp"), _flan("commonsense"), _flan("rc_commonsense")
  assert not _datasets("flan_heldout_reading_comp") & (rc | rccs) and cs <= _datasets("flan_heldout_reading_comp")
  assert not _datasets("flan_heldout_commonsense") & (cs | rccs) and rc <= _datasets("flan_heldout_commonsense")
  assert not _datasets("flan_heldout_rc_commonsense") & (rc | cs | rccs)
  infos = [task_info(n) for n in flan.TASKS]
  for cluster in CLUSTERS:  # the mixtures are the library's held-out split of these tasks
    train, evals = heldout_split(infos, cluster)
    assert {t.name for t in train} == {t.name for t in seqio.get_mixture_or_task(f"flan_heldout_{cluster}").tasks}


# --- registration is lazy -------------------------------------------------------------------------------------------
def test_import_reads_no_data():
  code = textwrap.dedent("""
      import tensorflow_datasets as tfds

      def refuse(*args, **kwargs):
        raise AssertionError("TFDS touched while registering")

      tfds.builder = tfds.load = tfds.data_source = tfds.builder_cls = refuse
      tfds.core.DatasetBuilder.__init__ = refuse
      import itjax_tasks.flan
      print(len(itjax_tasks.flan.TASKS))
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert int(out.stdout.split()[-1]) == len(flan.TASKS)



def test_train_split_is_capped_at_flans_30k_the_same_subset_every_epoch(mocked):
  from itjax.data.sources import TfdsSource, shard_quota
  from itjax_tasks.flan._common import MAX_TRAIN_EXAMPLES

  assert MAX_TRAIN_EXAMPLES == 30_000
  assert all(s._max == {"train": MAX_TRAIN_EXAMPLES} for s in {seqio.get_mixture_or_task(n).source for n in QUICK})
  source = TfdsSource(tfds_name="glue/mnli:2.0.0", splits={"train": "train", "validation": "validation_matched"},
                      max_examples={"train": NUM_EXAMPLES - 1})
  rows = source.get_dataset("train", shuffle=True, seed=1)
  first, again = (list(rows.as_numpy_iterator()) for _ in range(2))
  assert len(first) == NUM_EXAMPLES - 1 and [r["premise"] for r in first] == [r["premise"] for r in again]
  assert len(list(source.get_dataset("validation").as_numpy_iterator())) == NUM_EXAMPLES  # other splits whole
  assert [shard_quota(3, seqio.ShardInfo(i, 2)) for i in range(2)] == [2, 1]
  assert sum(shard_quota(30_000, seqio.ShardInfo(i, 7)) for i in range(7)) == 30_000
  with mock.patch.object(seqio.utils.LazyTfdsLoader, "size", return_value=100):
    assert source.num_input_examples("train") == NUM_EXAMPLES - 1 and source.num_input_examples("validation") == 100
