"""User mistakes on the command line are one-line errors that name the thing."""

import os
import subprocess
import sys

import pytest

from itjax.cli import main

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tiny.gin")


def run_cli(capsys, *argv):
  code = main(list(argv))
  out = capsys.readouterr()
  return code, out.out, out.err


def one_line_error(capsys, *argv) -> str:
  code, _, err = run_cli(capsys, *argv)
  assert code == 2
  lines = [line for line in err.splitlines() if line.startswith("itjax: error:")]
  assert len(lines) == 1, err
  assert "Traceback" not in err
  return lines[0]


def test_unknown_configurable_suggests_nearest(capsys, tmp_path):
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path}", "--gin.trian.seed=1")
  assert "unknown gin configurable 'trian'" in msg and "did you mean train" in msg


def test_misspelled_parameter_suggests_nearest(capsys, tmp_path):
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path}", "--gin.train.trian_steps=3")
  assert "'train' has no parameter 'trian_steps'" in msg and "train_steps" in msg


def test_missing_required_value_is_named(capsys):
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}")
  assert "missing required gin value MODEL_DIR" in msg and "--gin.MODEL_DIR=" in msg


def test_unknown_task_suggests_nearest(capsys, tmp_path):
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path}",
                       "--gin.MIXTURE_OR_TASK_NAME='proc_heldout_nl'")
  assert "unknown task or mixture 'proc_heldout_nl'" in msg and "proc_heldout_nli" in msg


def test_unknown_eval_mixture_is_named(capsys, tmp_path):
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path}",
                       "--gin.EVAL_MIXTURES={'x': 'proc_add_zs_nooptt'}")
  assert "'proc_add_zs_nooptt'" in msg and "proc_add_zs_noopt" in msg


def test_undefined_macro_is_named(capsys, tmp_path):
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path}", "--gin.train.seed=%SEEDD")
  assert "%SEEDD" in msg and "SEED" in msg


def test_missing_gin_file(capsys):
  msg = one_line_error(capsys, "train", "--gin_file=runs/no_such.gin")
  assert "runs/no_such.gin not found" in msg


def test_bare_word_binding_is_a_string(capsys, tmp_path):
  # T5X needs quotes around strings; itjax also takes a bare task name.
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path}",
                       "--gin.MIXTURE_OR_TASK_NAME=no_such_task")
  assert "unknown task or mixture 'no_such_task'" in msg


def test_bad_mesh_shape(capsys, tmp_path):
  msg = one_line_error(capsys, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path}",
                       "--gin.create_mesh.mesh_shape=(3, 1, 1)")
  assert "create_mesh.mesh_shape=(3, 1, 1)" in msg


@pytest.mark.parametrize("argv", [["tasks", "show", "proc_ad_zs_noopt"], ["eval", f"--gin_file={TINY}"]])
def test_other_subcommands_report_one_line(capsys, argv):
  one_line_error(capsys, *argv)


def test_console_script_exit_code_and_single_line(tmp_path):
  """The installed `itjax` entry point: exit status 2 and one line on stderr, no traceback."""
  exe = os.path.join(os.path.dirname(sys.executable), "itjax")
  proc = subprocess.run([exe, "train", f"--gin_file={TINY}", f"--model_dir={tmp_path}", "--gin.train.stepz=1"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith("itjax: error:")]
  assert errors == ["itjax: error: gin configurable 'train' has no parameter 'stepz' (flag --gin.train.stepz=1)"]
  assert "Traceback" not in proc.stderr
