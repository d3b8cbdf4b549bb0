# PrfaaS developer entry points. `make demo` and `make test` work on a machine with only Python:
# they create .venv, install torch==2.13.0 first (the CPU wheel), then the pinned rest
# (requirements.lock): `make install` and `make test` with every extra (the Dockerfile runs the
# same two pip lines; tests/unit/test_packaging.py compares them), `make demo` with only what the
# demo runs (the torch engine and the openai client), unless the full install is already there.
# `make demo` starts the live system on localhost, sends two requests and stops it again.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-installed-stamp

.PHONY: install demo test lint typecheck imports unit clean

$(STAMP): EXTRAS := dev,plot,client,ray,engine
$(DEMO_STAMP): EXTRAS := engine,client
$(STAMP) $(DEMO_STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c requirements.lock -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: $(if $(wildcard $(STAMP)),$(STAMP),$(DEMO_STAMP))
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
