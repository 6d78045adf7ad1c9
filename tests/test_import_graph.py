"""The layout keeps reading as the pipeline: no import cycles, lower layers never import higher ones, and the
commands and modules that read no task data start without TensorFlow or seqio."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"itjax": REPO / "itjax", "itjax_tasks": REPO / "tasks"}
# A module may import its own layer or lower ones. peft and data sit side by side (neither imports the other).
LAYERS = {"itjax.errors": 0, "itjax.models": 1, "itjax.core": 2, "itjax.data": 3, "itjax.peft": 3,
          "itjax.train": 4, "itjax.convert": 4, "itjax_tasks": 4, "itjax.eval": 5, "itjax.serve": 5,
          "itjax.synth": 6, "itjax.config": 7, "itjax.cli": 8, "itjax": 0}
# Function-local imports of itjax modules are for start-up time only: the CLI imports each subcommand's code
# when that subcommand runs. Anywhere else they could hide a cycle, so they are not allowed.
LAZY_OK = {"itjax.cli"}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for pkg, root in PACKAGES.items():
    for path in root.rglob("*.py"):
      rel = path.relative_to(root).with_suffix("")
      parts = [p for p in rel.parts if p != "__init__"]
      out[".".join([pkg, *parts])] = path
  return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """The itjax module an import names (`from a.b import c` may name module a.b.c or an attribute of a.b)."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _imports(module: str, path: pathlib.Path) -> list[tuple[str, int, bool]]:
  """(imported itjax module, line, inside a function) for every import statement of a module."""
  tree = ast.parse(path.read_text())
  local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
           for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
  out = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" for a in node.names]
    for n in names:
      target = _resolve(n)
      if target and target != module:
        out.append((target, node.lineno, id(node) in local))
  return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> tuple[str, int]:
  name = module
  while name not in LAYERS:
    name = name.rpartition(".")[0]
  return name, LAYERS[name]


def _package(module: str) -> str:
  return _layer(module)[0]


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """One cycle of a directed graph, or None."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(n: str) -> list[str] | None:
    state[n] = 1
    stack.append(n)
    for m in sorted(edges.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state and (found := visit(m)):
        return found
    state[n] = 2
    stack.pop()
    return None

  for n in sorted(edges):
    if n not in state and (found := visit(n)):
      return found
  return None


def test_no_module_cycle_counting_function_local_imports():
  edges = {m: {t for t, _, _ in imps} for m, imps in GRAPH.items()}
  assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"


def test_no_package_cycle():
  edges: dict[str, set[str]] = {}
  for m, imps in GRAPH.items():
    edges.setdefault(_package(m), set()).update(_package(t) for t, _, _ in imps if _package(t) != _package(m))
  assert _cycle(edges) is None, f"package cycle: {' -> '.join(_cycle(edges))}"


def test_every_import_goes_to_the_same_or_a_lower_layer():
  wrong = []
  for m, imps in GRAPH.items():
    (pkg, layer) = _layer(m)
    for t, line, _ in imps:
      tpkg, tlayer = _layer(t)
      if tpkg != pkg and tlayer >= layer:
        wrong.append(f"{MODULES[m].relative_to(REPO)}:{line} ({pkg}, layer {layer}) imports {t} ({tpkg}, layer "
                     f"{tlayer})")
  assert not wrong, "\n".join(wrong)


def test_the_foundation_imports_no_higher_layer():
  higher = ("itjax.train", "itjax.eval", "itjax.serve", "itjax.peft", "itjax.convert", "itjax.synth", "itjax.data")
  found = [(m, t) for m, imps in GRAPH.items() if m.startswith("itjax.core") for t, _, _ in imps
           if t.startswith(higher)]
  assert not found


def test_function_local_imports_only_in_the_cli():
  found = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}" for m, imps in GRAPH.items() for t, line, local in imps
           if local and m not in LAZY_OK]
  assert not found, "\n".join(found)


def test_the_graph_sees_the_known_layers():
  """A check of the checker: it finds the imports it is meant to judge."""
  assert any(t == "itjax.models.families" for t, _, _ in GRAPH["itjax.core.model_dir"])
  assert any(local for _, _, local in GRAPH["itjax.cli"])
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


TF_FREE = ("itjax.models.families", "itjax.train.step", "itjax.train.objectives.cross_entropy", "itjax.train.build",
           "itjax.train.aot", "itjax.core.model_dir", "itjax.convert.hf", "itjax.convert.peft_adapter",
           "itjax.serve.server", "itjax.eval.infer", "itjax.config", "itjax.cli")
PROBE = """
import importlib, json, sys
first = {}
for name in sys.argv[1:]:
  importlib.import_module(name)
  for heavy in ("tensorflow", "seqio", "tensorflow_text"):
    if heavy in sys.modules and heavy not in first:
      first[heavy] = name
print(json.dumps(first))
"""


def test_models_step_loss_and_data_free_commands_import_without_tensorflow():
  """One fresh interpreter imports each module in turn and notes which one first pulled in TensorFlow or seqio."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", PROBE, *TF_FREE], cwd=REPO, env=env, capture_output=True, text=True,
                       check=True)
  assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_the_import_probe_sees_tensorflow():
  """A check of the probe: the data pipeline does import TensorFlow."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  out = subprocess.run([sys.executable, "-c", PROBE, "itjax.models.families", "itjax.data.pipeline"], cwd=REPO,
                       env=env, capture_output=True, text=True, check=True)
  assert json.loads(out.stdout.strip().splitlines()[-1])["tensorflow"] == "itjax.data.pipeline"
