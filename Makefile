# PrfaaS developer entry points. `make demo` and `make test` work on a machine with only Python:
# they create .venv, install torch==2.13.0 first (the CPU wheel), then the pinned rest with every
# extra (the Dockerfile runs the same two pip lines; tests/unit/test_packaging.py compares them).
# `make demo` starts the live system on localhost, sends two requests and stops it again.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck imports unit clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c requirements.lock -e '.[dev,plot,client,ray,engine]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/prfaas demo

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

typecheck: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest

test: lint typecheck imports unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
