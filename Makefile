# `make run`: create .venv, install (CPU torch first, then uniserve), train+index the shipped
# sample on first start, serve on 127.0.0.1:8000.   `make test`: install (with the `ray` extra,
# which the Ray rebuild tests need and `make run` does not), run the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: run install install-ray test lint typecheck clean

run: install
	$(BIN)/uniserve serve

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU wheel first: an unpinned torch would pull gigabytes of CUDA packages
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install-ray: $(VENV)/.installed-ray

$(VENV)/.installed-ray: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[ray]'
	touch $@

test: install-ray
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf .uniserve .pytest_cache .ruff_cache .mypy_cache
