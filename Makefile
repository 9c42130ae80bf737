# Every target creates or reuses .venv, so a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tpuconsole needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,grpo]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tpuconsole $(ARGS)

test: $(STAMP)
	@scripts/install-test-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/fleet_list.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/logtail.py
	$(BIN)/python bench/probe.py
	$(BIN)/python bench/multi_engine.py
	$(BIN)/python bench/long_lines.py

clean:
	rm -rf $(VENV) .pytest_cache
