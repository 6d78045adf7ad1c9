# The two set-up commands (README): `make demo` and `make test`.
# Each creates .venv with Python 3.11 if it is missing, then runs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/tiny_heldout

.PHONY: demo test test-all lint clean

$(BIN)/itjax: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 (CPU) first, from its own line, so nothing pulls a CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(BIN)/itjax

demo: $(BIN)/itjax
	rm -rf $(DEMO_DIR)
	$(BIN)/itjax train --gin_file=gin_configs/examples/tiny_heldout.gin --model_dir=$(DEMO_DIR)

test: $(BIN)/itjax
	# Two workers per file group (module fixtures stay in one process): 14-20 min on 2 cores (2026-12), vs 18+ serially.
	$(BIN)/python -m pytest -q -m "not slow" -n auto --maxprocesses=2 --dist loadfile tests
	$(BIN)/ruff check .

test-all: $(BIN)/itjax
	$(BIN)/python -m pytest -q -n auto --maxprocesses=2 --dist loadfile tests

lint: $(BIN)/itjax
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs *.egg-info
