"""A corpus of bad inputs to `itjax train` / `infer`: each is a one-line error naming the offending gin parameter,
flag, file or path (exit status 2), before any training step, and never a traceback."""

import json

import pytest

from tests.cli.test_cli_errors import TINY, one_line_error

# (flags after `itjax train --gin_file=tests/tiny.gin --model_dir=DIR`, what the message must contain)
GIN_CASES = {
    "misspelled macro": (["--gin.TRAIN_STEPZ=100"], ["%TRAIN_STEPZ", "did you mean TRAIN_STEPS"]),
    "unknown macro": (["--gin.NO_SUCH_THING=3"], ["--gin.NO_SUCH_THING=3", "uses %NO_SUCH_THING"]),
    "negative steps": (["--gin.TRAIN_STEPS=-1"], ["train.train_steps=-1", ">= 0"]),
    "zero batch": (["--gin.BATCH_SIZE=0"], ["train.batch_size=0", ">= 1"]),
    "string batch": (["--gin.BATCH_SIZE='a'"], ["train.batch_size='a'"]),
    "float batch": (["--gin.BATCH_SIZE=8.0"], ["train.batch_size=8.0"]),
    "batch the mesh does not divide": (["--gin.BATCH_SIZE=3"], ["train.batch_size=3 must divide by the 8"]),
    "lengths missing targets": (["--gin.TASK_FEATURE_LENGTHS={'inputs': 8}"], ["TASK_FEATURE_LENGTHS="]),
    "zero input length": (["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 4}"],
                          ["TASK_FEATURE_LENGTHS['inputs']=0"]),
    "lengths not a dict": (["--gin.TASK_FEATURE_LENGTHS=128"], ["TASK_FEATURE_LENGTHS=128"]),
    "fractional log_every": (["--gin.train.log_every=2.5"], ["train.log_every=2.5"]),
    "exit status 2 for preemption": (["--gin.train.preempted_exit_code=2"], ["train.preempted_exit_code=2"]),
    "exit status over 255": (["--gin.train.preempted_exit_code=300"], ["train.preempted_exit_code=300"]),
    "zero microbatches": (["--gin.train.num_microbatches=0"], ["train.num_microbatches=0"]),
    "zero eval period": (["--gin.train.eval_period=0"], ["train.eval_period=0"]),
    "zero checkpoint period": (["--gin.checkpoint_settings.period=0"], ["checkpoint_settings.period=0"]),
    "zero checkpoints kept": (["--gin.checkpoint_settings.keep=0"], ["checkpoint_settings.keep=0"]),
    "bad best mode": (["--gin.checkpoint_settings.best_mode='avg'"], ["checkpoint_settings.best_mode='avg'"]),
    "bad best metric": (["--gin.checkpoint_settings.best_metric='held-out/bleu9'"],
                        ["checkpoint_settings.best_metric='held-out/bleu9'"]),
    "unknown packer": (["--gin.stream_settings.packer='greedy'"], ["unknown packer 'greedy'"]),
    "zero data shards": (["--gin.stream_settings.data_shards=0"], ["stream_settings.data_shards=0"]),
    "negative eval batch": (["--gin.eval_settings.batch_size=-2"], ["eval_settings.batch_size=-2"]),
    "zero new tokens": (["--gin.eval_settings.max_new_tokens=0"], ["eval_settings.max_new_tokens=0"]),
    "zero eval examples": (["--gin.eval_settings.max_examples_per_task=0"], ["eval_settings.max_examples_per_task=0"]),
    "string decontamination count": (["--gin.eval_settings.decontamination_examples_per_task='all'"],
                                     ["eval_settings.decontamination_examples_per_task='all'"]),
    "string layer count": (["--gin.DecoderConfig.num_layers='two'"], ["DecoderConfig.num_layers='two'"]),
    "zero width": (["--gin.DecoderConfig.emb_dim=0"], ["DecoderConfig.emb_dim=0", ">= 1"]),
    "bool as size": (["--gin.DecoderConfig.mlp_dim=True"], ["DecoderConfig.mlp_dim=True"]),
    "heads not a multiple of kv heads": (["--gin.DecoderConfig.num_heads=3", "--gin.DecoderConfig.num_kv_heads=2"],
                                         ["DecoderConfig.num_heads=3 must be a multiple", "num_kv_heads=2"]),
    "string rope theta": (["--gin.DecoderConfig.rope_theta='big'"], ["DecoderConfig.rope_theta='big'"]),
    "string tie flag": (["--gin.DecoderConfig.tie_embeddings='yes'"], ["DecoderConfig.tie_embeddings='yes'"]),
    "unknown truncation": (["--gin.truncation.default='keep_middle'"], ["truncation.default='keep_middle'"]),
    "field truncation as default": (["--gin.truncation.default='field:passage'"], ["truncation.default"]),
    "unknown configurable": (["--gin.trian.seed=1"], ["unknown gin configurable 'trian'"]),
    "unknown parameter": (["--gin.train.trian_steps=3"], ["has no parameter 'trian_steps'"]),
    "undefined macro reference": (["--gin.train.seed=%SEEDD"], ["%SEEDD"]),
    "unknown task": (["--gin.MIXTURE_OR_TASK_NAME='proc_add_zs_nooptt'"], ["'proc_add_zs_nooptt'"]),
    "unterminated string flag": (["--gin.MIXTURE_OR_TASK_NAME='proc_add"], ["--gin.MIXTURE_OR_TASK_NAME"]),
    "unbalanced bracket flag": (["--gin.EVAL_MIXTURES={'a': 'proc_add_zs_noopt'"], ["--gin.EVAL_MIXTURES"]),
    "flag without value": (["--gin.TRAIN_STEPS"], ["--gin.TRAIN_STEPS: expected --gin.NAME=VALUE"]),
}


@pytest.mark.parametrize("flags,expected", list(GIN_CASES.values()), ids=list(GIN_CASES))
def test_bad_gin_values(capsys, tmp_path, flags, expected):
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path / 'run'}", *flags)
  for part in expected:
    assert part in msg, msg
  assert not (tmp_path / "run" / "checkpoints").exists()  # failed before training


@pytest.mark.parametrize("text,expected", [
    ("DecoderConfig.emb_dim = (32\nTRAIN_STEPS = 2\n", "bad.gin, line 3"),  # gin's parser sees the next line
    ("TRAIN_STEPS = 2\nDecoderConfig.emb_dim = (32\n", "bad.gin, line 3: this '(' is never closed"),  # at the end
    ("EVAL_MIXTURES = {'a': [\n  'b',\n", "bad.gin, line 2: this '[' is never closed"),
    ("MIXTURE_OR_TASK_NAME = 'proc_add\n", "bad.gin, line 2"),
    ('MIXTURE_OR_TASK_NAME = """proc_add\n', "bad.gin, line 2: unterminated string"),
])
def test_gin_file_syntax_errors_name_file_and_line(capsys, tmp_path, text, expected):
  bad = tmp_path / "bad.gin"
  bad.write_text(f"include '{TINY}'\n{text}")
  msg = one_line_error(capsys, "train", f"--gin_file={bad}", f"--model_dir={tmp_path / 'run'}")
  assert expected in msg, msg


def test_missing_gin_file(capsys, tmp_path):
  msg = one_line_error(capsys, "train", f"--gin_file={tmp_path / 'nope.gin'}", f"--model_dir={tmp_path}")
  assert "nope.gin" in msg


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_model_dir_that_is_a_file(capsys, tmp_path, where):
  blocker = tmp_path / "blocker"
  blocker.write_text("x")
  path = blocker if where == "file" else blocker / "run"
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={path}")
  assert f"MODEL_DIR={path}" in msg and "file" in msg


@pytest.mark.parametrize("flag, expected", [("--gin.infer.max_new_tokens=0", "infer.max_new_tokens=0"),
                                            ("--gin.infer.batch_size='8'", "infer.batch_size='8'")])
def test_bad_infer_settings(capsys, tmp_path, flag, expected):
  msg = one_line_error(capsys, "infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{tmp_path}'",
                       "--input=hi", flag)
  assert expected in msg, msg


def test_infer_input_file_that_does_not_exist(capsys, tmp_path):
  msg = one_line_error(capsys, "infer", f"--gin_file={TINY}", f"--model_dir={tmp_path}",
                       f"--input_file={tmp_path / 'prompts.txt'}")
  assert f"--input_file={tmp_path / 'prompts.txt'}" in msg and "No such file" in msg


@pytest.mark.parametrize("content,reason", [("", "0 of 0 lines"), ("\n\n  \n", "0 of 0 lines"),
                                            ('{"prompt": 1}\n[1]\nnot json\n', "skipped 3")])
def test_jsonl_task_without_a_valid_line_names_the_file(capsys, tmp_path, content, reason):
  data = tmp_path / "data.jsonl"
  data.write_text(content)
  name = f"corpus_empty{len(content)}"  # one module and task per case (imported in-process)
  module = tmp_path / f"{name}_tasks.py"
  module.write_text("from itjax.data.jsonl import register_jsonl_task\n"
                    f"register_jsonl_task({name!r}, {{'train': {str(data)!r}}}, 'prompt_completion', "
                    "on_error='skip')\n")
  msg = one_line_error(capsys, "train", f"--tasks_module={module}", f"--gin_file={TINY}",
                       f"--model_dir={tmp_path / 'run'}", f"--gin.MIXTURE_OR_TASK_NAME='{name}_zs_noopt'",
                       "--gin.EVAL_MIXTURES=None")
  assert f"task '{name}_zs_noopt' has no training examples" in msg and str(data) in msg and reason in msg


def test_config_json_check_is_the_same_for_hf_style_values(tmp_path):
  """Model configs built from files (model_config.json, HF config.json) get the same checks as gin's."""
  from itjax.errors import UserError
  from itjax.models.decoder import DecoderConfig

  with pytest.raises(UserError, match=r"DecoderConfig.num_layers='4' must be an integer"):
    DecoderConfig(**json.loads('{"num_layers": "4"}'))


def test_tasks_show_of_a_tfds_task_without_its_data(capsys, tmp_path, monkeypatch):
  """Nothing downloads: absent TFDS data is a one-line error naming the dataset and what to do."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  msg = one_line_error(capsys, "tasks", "show", "flan_ag_news_zs_noopt")
  assert "TFDS dataset 'ag_news_subset" in msg and ("is not prepared in" in msg or "cannot open it" in msg), msg
