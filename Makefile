# skin_tf — the two commands: `make demo` (the main job) and `make test`.
# Everything installs into .venv from this project's own files (pyproject.toml).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SKIN_TF_TEST_DATA ?= $(abspath ../shared/data/ham10000)
export SKIN_TF_TEST_DATA

.PHONY: notebooks browser install test test-fast lint format demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The browser end-to-end test drives Debian's Chromium (no browser download). Installed here when
# missing and we can (root + apt-get); otherwise that one test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian chromium for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null) \
	    || echo "could not install chromium: the browser test will skip"; \
	fi

install: $(VENV)/.installed

# Notebooks are linted but not reformatted: their cells keep a compact, readable layout.
# lint-imports checks the layer contracts in pyproject.toml (docs/ARCHITECTURE.md).
lint: install
	$(BIN)/ruff check skin_tf tests benchmarks notebooks
	$(BIN)/ruff format --check skin_tf tests benchmarks
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix skin_tf tests benchmarks notebooks
	$(BIN)/ruff format skin_tf tests benchmarks

# Full suite: fast unit tests plus the real-data tier (SKIN_TF_TEST_DATA, default ../shared/data/ham10000).
# TEST_WORKERS pytest-xdist processes, one test file each at a time (a file's fixtures and order
# are kept): most of a test's time is tracing and converting models on one core, so two workers
# on two cores nearly halve the wall time. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: lint browser
	$(BIN)/python -m pytest -ra -n $(TEST_WORKERS) --dist loadfile --durations=40

# Quick tier only.
test-fast: install
	$(BIN)/python -m pytest -ra -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# The main job: data (SKIN_TF_DATA, data/ham10000 or a download) -> train -> calibrate -> threshold
# -> evaluate -> export saved_models/demo -> Streamlit page. NO_APP=1 stops before the page;
# DEMO_PROFILE=smoke makes it tiny. Re-running reuses what exists.
DEMO_PROFILE ?= full
demo: install
	$(BIN)/skin-tf demo --profile $(DEMO_PROFILE) $(if $(NO_APP),--no-app,)

# The seven notebooks top to bottom, for real: `make notebooks PROFILE=cpu` (hours on 2 cores;
# PROFILE=smoke: minutes). Executed copies go to notebooks/executed/ (git-ignored); figures,
# summaries and tables to results/. DATA=path overrides $$SKIN_TF_DATA / data/ham10000.
PROFILE ?= cpu
notebooks: install
	@mkdir -p notebooks/executed
	@set -e; for nb in notebooks/0*.ipynb; do \
	  echo "== $$nb (profile $(PROFILE))"; \
	  $(BIN)/papermill "$$nb" "notebooks/executed/$$(basename $$nb)" -k python3 --cwd notebooks \
	    -p profile $(PROFILE) $(if $(DATA),-p data_dir $(abspath $(DATA))); \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache .grimp_cache
