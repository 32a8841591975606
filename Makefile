# skin_tf — the two commands: `make demo` (the main job) and `make test`.
# Everything installs into .venv from this project's own files (pyproject.toml).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SKIN_TF_TEST_DATA ?= $(abspath ../shared/data/ham10000)
export SKIN_TF_TEST_DATA

.PHONY: install test test-fast lint format demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check skin_tf tests benchmarks
	$(BIN)/ruff format --check skin_tf tests benchmarks

format: install
	$(BIN)/ruff check --fix skin_tf tests benchmarks
	$(BIN)/ruff format skin_tf tests benchmarks

# Full suite: fast unit tests plus the real-data tier (SKIN_TF_TEST_DATA, default ../shared/data/ham10000).
test: lint
	$(BIN)/python -m pytest -ra

# Quick tier only.
test-fast: install
	$(BIN)/python -m pytest -ra -m "not slow"

demo: install
	@echo "make demo: train the demo config, evaluate, pick the melanoma operating point on validation,"
	@echo "calibrate, export saved_models/demo and open the Streamlit page. Not wired yet (issue 9)."

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
