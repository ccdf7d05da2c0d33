# The two commands of the README:
#   make run   set up this machine and run the whole pipeline (`mdpipe up`; the emulator without
#              MASSIVE_API_KEY)
#   make test  set up this machine and run the checks and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint services browser bench bench-mdp bench-wds clean

SPA_VENDOR := scp/apps/_default/static/vendor/lightweight-charts.standalone.production.js

setup: $(VENV)/.installed $(SPA_VENDOR)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip setuptools
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The dashboard's chart library, from npm with the lock file (scp/spa/package-lock.json).
$(SPA_VENDOR): scp/spa/package-lock.json
	scripts/build-spa

run: setup
	scripts/ensure-services rabbitmq redis
	$(BIN)/mdpipe up

services:
	scripts/ensure-services

browser:
	scripts/ensure-browser

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint services browser
	$(BIN)/python -m pytest
	scripts/audit-deps $(BIN)/python

bench: setup
	$(BIN)/python bench/sim_flatout.py

bench-mdp: setup services
	$(BIN)/python bench/mdp_throughput.py

bench-wds: setup services
	$(BIN)/python bench/wds_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
