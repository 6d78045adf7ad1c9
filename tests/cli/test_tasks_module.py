"""`--tasks_module`: a module name, a .py file or a package directory, importable without PYTHONPATH, in the same
place for every subcommand, recorded in the run's config.gin and imported again by `itjax eval` of that run."""

import json
import os
import sys
import uuid

import pytest
import seqio

from itjax import config
from itjax.cli import main
from itjax.data.registry import import_task_modules
from itjax.errors import UserError

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tiny.gin")
ROWS = [{"instruction": f"Name fruit number {i} of the list.", "input": "", "output": f"Fruit {i}."} for i in range(4)]


@pytest.fixture
def user_tasks(tmp_path, monkeypatch):
  """A folder with data.jsonl and a tasks module (file and package forms) registering a uniquely named task;
  undoes the imports, sys.path entries and registrations afterwards."""
  tag = uuid.uuid4().hex[:8]
  (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  body = ("import os\nfrom itjax.data import jsonl\n"
          "DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), {rel!r})\n"
          "jsonl.register_jsonl_task({task!r}, {{'train': [DATA], 'validation': [DATA]}}, 'alpaca')\n")
  names = {"file": f"tasks_{tag}", "pkg": f"pkg_{tag}"}
  (tmp_path / f"{names['file']}.py").write_text(body.format(rel="data.jsonl", task=f"user_{tag}"))
  (tmp_path / names["pkg"]).mkdir()
  (tmp_path / names["pkg"] / "__init__.py").write_text(body.format(rel="../data.jsonl", task=f"userpkg_{tag}"))
  monkeypatch.setattr(sys, "path", list(sys.path))
  yield {"dir": tmp_path, "tag": tag, **names, "task": f"user_{tag}_zs_noopt", "pkg_task": f"userpkg_{tag}_zs_noopt"}
  for m in names.values():
    sys.modules.pop(m, None)
  for t in list(seqio.TaskRegistry.names()):
    if tag in t:
      seqio.TaskRegistry.remove(t)


def _err(capsys, *argv) -> str:
  assert main(list(argv)) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("itjax: error:")]
  assert len(err) == 1
  return err[0]


@pytest.mark.parametrize("form", ["name_in_cwd", "relative_file", "absolute_file", "package_dir"])
@pytest.mark.parametrize("where", ["before_command", "after_group", "after_subcommand"])
def test_tasks_list_imports_the_module_wherever_the_flag_is(user_tasks, monkeypatch, capsys, form, where):
  monkeypatch.chdir(user_tasks["dir"])
  spec = {"name_in_cwd": user_tasks["file"], "relative_file": f"./{user_tasks['file']}.py",
          "absolute_file": str(user_tasks["dir"] / f"{user_tasks['file']}.py"),
          "package_dir": f"{user_tasks['pkg']}/"}[form]
  flag = ["--tasks_module", spec]
  argv = {"before_command": [*flag, "tasks", "list", user_tasks["tag"]],
          "after_group": ["tasks", *flag, "list", user_tasks["tag"]],
          "after_subcommand": ["tasks", "list", user_tasks["tag"], *flag]}[where]
  assert main(argv) == 0
  want = user_tasks["pkg_task"] if form == "package_dir" else user_tasks["task"]
  assert want in capsys.readouterr().out


def test_resolved_modules_import_again_from_anywhere(user_tasks, monkeypatch, tmp_path_factory):
  monkeypatch.chdir(user_tasks["dir"])
  file, pkg = user_tasks["file"], user_tasks["pkg"]
  got = import_task_modules([file, pkg, f"{file}.py", "json"])
  assert got == [str(user_tasks["dir"] / f"{file}.py"), str(user_tasks["dir"] / pkg), "json"]  # deduplicated
  monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
  assert import_task_modules(got) == got  # already imported: the same modules, nothing registered twice


def test_missing_and_broken_modules_are_one_line_errors(user_tasks, monkeypatch, capsys, tmp_path):
  monkeypatch.chdir(user_tasks["dir"])
  msg = _err(capsys, "tasks", "list", "--tasks_module", "no_such_tasks_mod")
  assert "task module 'no_such_tasks_mod' not found" in msg and "current directory" in msg
  assert "'missing.py': no such file or directory" in _err(capsys, "--tasks_module", "missing.py", "tasks", "list")
  (tmp_path / "broken_dep.py").write_text("import no_such_dependency_xyz\n")
  msg = _err(capsys, "tasks", "list", "--tasks_module", str(tmp_path / "broken_dep.py"))
  assert "could not be imported: No module named 'no_such_dependency_xyz'" in msg
  (tmp_path / "bad_syntax.py").write_text("def f(:\n")
  assert "bad_syntax.py:1:" in _err(capsys, "tasks", "list", "--tasks_module", str(tmp_path / "bad_syntax.py"))
  (tmp_path / "not_a_pkg").mkdir()
  assert "__init__.py" in _err(capsys, "tasks", "list", "--tasks_module", str(tmp_path / "not_a_pkg"))
  (tmp_path / "json.py").write_text("")
  assert "already taken" in _err(capsys, "tasks", "list", "--tasks_module", str(tmp_path / "json.py"))
  assert "reads no tasks" in _err(capsys, "--tasks_module", "x.py", "serve", "--checkpoint", "nowhere")


def test_train_records_the_modules_and_eval_imports_them_again(user_tasks, monkeypatch, capsys, tmp_path_factory):
  monkeypatch.chdir(user_tasks["dir"])
  model_dir = user_tasks["dir"] / "run"
  assert main(["train", f"--gin_file={TINY}", f"--model_dir={model_dir}",
               f"--gin.MIXTURE_OR_TASK_NAME={user_tasks['task']}", "--gin.TRAIN_STEPS=1",
               "--gin.CHECKPOINT_PERIOD=1", "--gin.EVAL_MIXTURES=None",
               "--tasks_module", user_tasks["file"]]) == 0
  file = str(user_tasks["dir"] / f"{user_tasks['file']}.py")
  text = (model_dir / "config.gin").read_text()
  assert "task_modules.from_command_line = " in text and repr(file) in text  # gin may wrap a long list
  assert config.recorded_task_modules(str(model_dir / "checkpoints")) == (str(model_dir / "config.gin"), (file,))
  # A fresh process has no user tasks: eval from another directory, without --tasks_module, finds them again.
  sys.modules.pop(user_tasks["file"])
  seqio.TaskRegistry.remove(user_tasks["task"])
  monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
  capsys.readouterr()
  assert main(["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH={model_dir}",
               f"--gin.EVAL_MIXTURES={{'mine': '{user_tasks['task']}'}}",
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 160, 'targets': 16}", "--gin.eval_settings.batch_size=4",
               "--gin.eval_settings.max_new_tokens=2", "--gin.eval_settings.split='validation'",
               "--gin.eval_settings.max_examples_per_task=2"]) == 0
  assert f"task modules recorded in {model_dir / 'config.gin'}: {file}" in capsys.readouterr().err
  os.remove(file)  # moved away since: the error says where the name came from
  msg = _err(capsys, "eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH={model_dir}",
             "--gin.EVAL_MIXTURES={'mine': 'x'}", "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}")
  assert f"{file!r}: no such file or directory (recorded in {model_dir / 'config.gin'}" in msg


def test_a_gin_file_may_name_task_modules(user_tasks, tmp_path):
  gin_file = tmp_path / "with_tasks.gin"
  gin_file.write_text(f"task_modules.modules = [{str(user_tasks['dir'] / user_tasks['pkg'])!r}]\n")
  config.parse([str(gin_file)], [config.task_modules_binding(["a_flag_module"])])
  assert config.task_modules() == ("a_flag_module", str(user_tasks["dir"] / user_tasks["pkg"]))
  with pytest.raises(UserError, match="not found"):
    import_task_modules(["no_such_tasks_mod_2"])
