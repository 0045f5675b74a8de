# `make run` and `make test` set everything up on a fresh machine (a .venv made with pip).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pip takes torch==2.14.1 and torchvision==0.29.1 from this machine's disk.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,cluster]"
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(PY) -m sparsebench

test: $(STAMP)
	$(PY) -m ruff check sparsebench runners tests benchmarks hydra_plugins
	$(PY) -m pytest -n 2 --timeout 600 tests

lint: $(STAMP)
	$(PY) -m ruff check sparsebench runners tests benchmarks hydra_plugins
	$(PY) -m ruff format --check sparsebench runners tests benchmarks hydra_plugins

bench: $(STAMP)
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.method_overhead
	$(PY) -m benchmarks.sparse_kernels

clean:
	rm -rf outputs multirun mlflow.db mlruns mlartifacts
