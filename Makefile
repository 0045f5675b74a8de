# `make run` and `make test` set everything up on a fresh machine (a .venv made with pip).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pip takes torch==2.14.1 and torchvision==0.29.1 from this machine's disk.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test test-fast lint imports bench clean system-deps

# Debian's chromium (renders the HTML report in a test) and docker-compose (validates
# docker-compose.yml): installed when missing, where we are root with apt-get.
SYSTEM_DEPS := chromium docker-compose

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,cluster]"
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(PY) -m sparsebench

system-deps:
	@missing=""; for c in $(SYSTEM_DEPS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing$$missing (apt-get)"; \
	  apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; } || \
	  echo "WARNING: apt-get could not install$$missing; the tests that need them skip"; \
	else echo "note:$$missing not installed (Debian: apt-get install$$missing); their tests skip"; fi

# The import layers are checked on the installed layout (runners/ as sparsebench.runners, as the
# wheel has it): import-linter reads a package's folder, and runners/ lives beside it.
LINT_VIEW := build/lint-view
imports: $(STAMP)
	rm -rf $(LINT_VIEW) && mkdir -p $(LINT_VIEW)
	cp -r sparsebench pyproject.toml $(LINT_VIEW)/ && cp -r runners $(LINT_VIEW)/sparsebench/runners
	cd $(LINT_VIEW) && PYTHONPATH=. $(CURDIR)/$(VENV)/bin/lint-imports --no-cache

test: $(STAMP) system-deps imports
	$(PY) -m ruff check sparsebench runners tests benchmarks hydra_plugins
	$(PY) -m ruff format --check sparsebench runners tests benchmarks hydra_plugins
	$(PY) -m pytest -n 2 --timeout 600 --durations=15 tests

# The inner loop: everything but the end-to-end runs (pytest -m "not slow").
test-fast: $(STAMP) imports
	$(PY) -m ruff check sparsebench runners tests benchmarks hydra_plugins
	$(PY) -m ruff format --check sparsebench runners tests benchmarks hydra_plugins
	$(PY) -m pytest -n 2 --timeout 600 -m "not slow" tests

lint: $(STAMP) imports
	$(PY) -m ruff check sparsebench runners tests benchmarks hydra_plugins
	$(PY) -m ruff format --check sparsebench runners tests benchmarks hydra_plugins

bench: $(STAMP)
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.method_overhead
	$(PY) -m benchmarks.sparse_kernels

clean:
	rm -rf outputs multirun mlflow.db mlruns mlartifacts
