# The two set-up commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test install install-test lint clean bench plugins

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The install compiles the broker's hot modules with mypyc (setup.py) in place, next to
# their sources: after an edit below protocol/ or broker/ the next `make run` or
# `make test` compiles again (PLUGBOARD_PURE_PYTHON=1: no compiling, pure Python).
HOT := $(wildcard protocol/*.py broker/*.py)

$(VENV)/.installed: pyproject.toml setup.py $(HOT) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[plugins]'
	touch $@

$(VENV)/.installed-test: pyproject.toml setup.py $(HOT) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

## plugins: build the C plugin and install the Node plugin's packages. Best effort: on a
## machine without libzmq/msgpack-c headers or Node, those plugins stay unbuilt, the
## runtime reports them as failed to start, and their tests skip (fail under CI=true).
plugins:
	-$(MAKE) -s -C plugins/counter_c
	-cd plugins/scaler_js && npm ci --no-audit --no-fund --silent

## run: the broker in the foreground on embedded defaults (Ctrl-C stops it)
run: install plugins
	@echo "the dashboard (plugin web): http://localhost:8780/  (plugboard get web/url)"
	$(BIN)/plugboard broker --plugins plugins

## test: the whole suite (exit 5, "no tests collected", counts as a failure)
test: install-test plugins
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'  # bench/ is type-checked too
	$(BIN)/ruff check protocol broker sdk plugin_runtime plugins bench tests
	$(BIN)/mypy
	MYPYPATH=bench $(BIN)/mypy bench  # scripts importing each other, not a package

clean:
	rm -rf $(VENV) *.egg-info

## bench: measure and write docs/BENCHMARKS*.md (reports only; never part of make test).
## Redis, MQTT and NATS columns need Debian's redis-server, mosquitto and nats-server;
## the relay in C (bench/c_relay.c) needs libzmq's headers (libzmq3-dev), else its rows
## are left out.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	-mkdir -p bench/.build && $(CC) -O2 -Wall -Wextra -std=c11 -o bench/.build/c_relay bench/c_relay.c -lzmq
	$(BIN)/python bench/persistence.py
	$(BIN)/python bench/run.py
