"""The wheel ships every module and gin file, an installed itjax finds its gin files from any directory,
and the gin comments tell the truth (commands the CLI accepts, the tiny models' parameter counts)."""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GIN_DIR = REPO / "gin_configs"
# Top-level entries of the checkout that are not sources of the wheel.
NOT_SOURCES = {".git", ".venv", "build", "dist", "runs", ".pytest_cache", ".ruff_cache"}


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
  r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, f"{cmd[:4]} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
  return r.stdout


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
  """A copy of the checkout's sources: building from it writes no build/ into the repo and cannot pick up
  stale build/lib files."""
  dst = tmp_path_factory.mktemp("src") / "itjax-src"

  def ignore(folder: str, names: list[str]) -> list[str]:
    top = Path(folder) == REPO
    return [n for n in names if n == "__pycache__" or (top and (n in NOT_SOURCES or n.endswith(".egg-info")))]

  shutil.copytree(REPO, dst, ignore=ignore)
  return dst


@pytest.fixture(scope="module")
def wheel(src, tmp_path_factory) -> Path:
  out = tmp_path_factory.mktemp("dist")
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
       cwd=out)
  (whl,) = out.glob("itjax-*.whl")
  return whl


def test_wheel_holds_every_module_and_gin_file(src, wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  expected = ({f"itjax/{p.relative_to(src / 'itjax').as_posix()}" for p in (src / "itjax").rglob("*.py")}
              | {f"itjax_tasks/{p.relative_to(src / 'tasks').as_posix()}" for p in (src / "tasks").rglob("*.py")}
              | {f"itjax/gin_configs/{p.relative_to(src / 'gin_configs').as_posix()}"
                 for p in (src / "gin_configs").rglob("*.gin")})
  assert any(n.startswith("itjax/gin_configs/models/") for n in expected)
  assert not sorted(expected - names), "missing from the wheel (pyproject [tool.setuptools])"


def test_installed_wheel_finds_its_gin_files_from_anywhere(wheel, tmp_path):
  site = tmp_path / "site"
  _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel)],
       cwd=tmp_path)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  probe = """if True:
    import sys
    import gin
    import itjax, itjax_tasks
    from itjax import config
    for m in (itjax, itjax_tasks, config):
      assert m.__file__.startswith(sys.argv[1]), m.__file__  # the wheel's copy, not the editable checkout
    assert config.GIN_CONFIGS_DIR.startswith(sys.argv[1]), config.GIN_CONFIGS_DIR
    for f in ("examples/tiny_heldout.gin", "gin_configs/examples/tiny_heldout.gin"):
      config.parse([f], ["MODEL_DIR='/tmp/x'"])  # with its include lines
      assert gin.query_parameter("DecoderConfig.emb_dim") == 192
    print("ok")
  """
  out = _run([sys.executable, "-c", probe, str(site)], cwd=elsewhere, env=_env(PYTHONPATH=str(site)))
  assert out.strip().endswith("ok")


def test_editable_install_and_source_tree_find_gin_configs(src, tmp_path):
  """`pip install -e` maps `itjax.gin_configs` onto <repo>/gin_configs; a bare checkout on sys.path falls back."""
  build = "import sys; from setuptools import build_meta; print(build_meta.build_editable(sys.argv[1]))"
  (tmp_path / "dist").mkdir()
  whl = _run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src).strip().splitlines()[-1]
  site = tmp_path / "site"
  _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(tmp_path / "dist" / whl)],
       cwd=tmp_path)
  probe = """if True:
    import importlib.resources, os, site, sys
    mode, root = sys.argv[1], sys.argv[2]
    if mode == "editable":
      site.addsitedir(sys.argv[3])  # runs its __editable__ .pth before the venv's own finder can be found
    else:
      sys.path.insert(0, root)
    sys.path.append(sys.argv[4])  # the venv's site-packages (gin etc.) without running its .pth files
    import itjax
    from itjax import config
    assert itjax.__file__ == os.path.join(root, "itjax", "__init__.py"), itjax.__file__
    assert config.GIN_CONFIGS_DIR == os.path.join(root, "gin_configs"), config.GIN_CONFIGS_DIR
    if mode == "editable":
      assert str(importlib.resources.files("itjax.gin_configs")) == config.GIN_CONFIGS_DIR
    assert os.path.isfile(os.path.join(config.GIN_CONFIGS_DIR, "examples", "tiny_heldout.gin"))
    print("ok")
  """
  for mode in ("editable", "source"):
    args = [mode, str(src), str(site), sysconfig.get_paths()["purelib"]]
    out = _run([sys.executable, "-S", "-c", probe, *args], cwd=tmp_path, env=_env())
    assert out.strip().endswith("ok"), mode


# --- gin comments ---------------------------------------------------------------------------------------------


def _commands_in_gin_comments() -> list[tuple[str, str]]:
  """(file:line, command) for each `itjax ...` shown in a gin comment: backquoted, or a comment line of its own
  (a trailing backslash continues it on the next comment line)."""
  found = []
  for f in sorted(GIN_DIR.rglob("*.gin")):
    pending, start = "", 0
    for n, line in enumerate(f.read_text().splitlines(), 1):
      if "#" not in line:
        pending = ""
        continue
      text = line.split("#", 1)[1].strip()
      text, start = (pending + " " + text, start) if pending else (text, n)
      if text.endswith("\\"):
        pending = text[:-1].strip()
        continue
      pending = ""
      for cmd in re.findall(r"`(itjax [^`]*)`", text) or re.findall(r"^(itjax\s.*)$", text):
        found.append((f"{f.relative_to(REPO)}:{start}", cmd))
  return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
  return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _gin_macros() -> set[str]:
  return {m for f in GIN_DIR.rglob("*.gin") for m in re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", f.read_text(), re.M)}


def _problems(cmd: str) -> list[str]:
  """What in an `itjax ...` command line the CLI would reject: unknown subcommand or flag, a --gin. binding
  on a subcommand without gin, an unknown macro, or a --gin_file that is in neither the repo root nor gin_configs/."""
  from itjax.cli import build_parser

  parser, name = build_parser(), "itjax"
  words = [w.strip("[]") for w in shlex.split(cmd)[1:]]
  if not words or words[0] not in _subcommands(parser):
    return [f"unknown subcommand in {cmd!r}; have {sorted(_subcommands(parser))}"]
  problems, macros = [], _gin_macros()
  for i, w in enumerate(words):
    if not w.startswith("-"):
      if w in _subcommands(parser):
        parser, name = _subcommands(parser)[w], f"{name} {w}"
      continue
    flag, _, value = w.partition("=")
    if flag.startswith("--gin."):
      binding = flag[len("--gin."):]
      if "--gin_file" not in parser._option_string_actions:
        problems.append(f"`{name}` takes no --gin. flags: {w}")
      elif "." not in binding and binding not in macros:
        problems.append(f"{flag}: no gin file under gin_configs/ sets the macro {binding}")
    elif flag not in parser._option_string_actions:
      problems.append(f"`{name}` has no flag {flag}")
    elif flag == "--gin_file":
      gin_file = value or (words[i + 1] if i + 1 < len(words) else "")
      if not any((root / gin_file).is_file() for root in (REPO, GIN_DIR)):
        problems.append(f"--gin_file {gin_file}: not in the repo root nor in gin_configs/")
  return problems


def test_commands_in_gin_comments_use_flags_the_cli_has():
  commands = _commands_in_gin_comments()
  assert len(commands) >= 15 and any(" convert " in c for _, c in commands), commands  # the scan sees them
  problems = [f"{where}: {p}" for where, cmd in commands for p in _problems(cmd)]
  assert not problems, "\n".join(problems)


def test_the_comment_check_catches_stale_flags():
  assert len(_problems("itjax convert --hf_dir=DIR --model_dir=OUT")) == 2
  assert _problems("itjax convert --from_hf HF_DIR --output OUT") == []
  assert _problems("itjax tasks show NAME -n 3 --split validation") == []
  assert _problems("itjax tasks list --split x") == ["`itjax tasks list` has no flag --split"]
  assert _problems("itjax serve --gin.TRAIN_STEPS=2") == ["`itjax serve` takes no --gin. flags: --gin.TRAIN_STEPS=2"]
  assert len(_problems("itjax train --gin_file=examples/nope.gin --gin.NO_SUCH_MACRO=1")) == 2
  assert len(_problems("itjax trian --gin_file=x.gin")) == 1


@pytest.mark.parametrize("name, configurable", [("decoder_tiny", "DecoderConfig"), ("t5_tiny", "T5Config")])
def test_tiny_model_comment_states_its_parameter_count(name, configurable):
  import jax
  import numpy as np

  from itjax.models.decoder import DecoderConfig
  from itjax.models.families import build_model, example_inputs
  from itjax.models.t5 import T5Config

  text = (GIN_DIR / "models" / f"{name}.gin").read_text()
  values = re.findall(rf"^{configurable}\.(\w+) = ([^%#\n]+?)\s*(?:#.*)?$", text, re.M)
  cfg = {"DecoderConfig": DecoderConfig, "T5Config": T5Config}[configurable](
      **{k: ast.literal_eval(v) for k, v in values})
  shapes = jax.eval_shape(lambda: build_model(cfg).init(jax.random.key(0), *example_inputs(cfg)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
  m = re.search(r"~([\d.]+)M-parameter \(([\d,]+)\)", text.splitlines()[0])
  assert m, f"{name}.gin: first line should say ~X.YM-parameter (N,NNN,NNN); measured {n:,}"
  assert (float(m.group(1)), int(m.group(2).replace(",", ""))) == (round(n / 1e6, 1), n), f"measured {n:,}"
