# Two commands on a fresh machine: `make run` and `make test`.
# TORCH is installed first and pinned so that no unpinned resolve pulls CUDA wheels;
# on a GPU machine override it, e.g. `make test TORCH="torch==2.13.0 --index-url ..."`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,md,ray,tensorboard]"
	touch $(STAMP)

run: setup
	$(VENV)/bin/boltzkit demo

test: setup
	$(PY) -m pytest -q -n 2 tests

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

bench: setup
	$(PY) benchmarks/energy_throughput.py

clean:
	rm -rf $(VENV) runs
