# Every target creates or reuses .venv, so a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The real sgl-jax engine needs Python 3.12 (or 3.13): its environment sits beside .venv.
# Without one, make says so and goes on; the sandbox then runs the reference engine.
PYTHON312 ?= python3.12
ENGINE_VENV := .venv-engine
ENGINE_STAMP := $(ENGINE_VENV)/.installed
ENGINE_FILES := scripts/make-engine-env.sh scripts/engine-requirements.txt \
	scripts/engine-constraints.txt scripts/engine-no-deps.txt scripts/tiny_llama.py

.PHONY: run test lint format bench clean engine

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tpuconsole needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,grpo]'
	touch $(STAMP)

$(ENGINE_STAMP): $(ENGINE_FILES)
	@scripts/make-engine-env.sh "$(PYTHON312)" $(ENGINE_VENV)

engine: $(ENGINE_STAMP)

run: $(STAMP) $(ENGINE_STAMP)
	$(BIN)/tpuconsole $(ARGS)

# Two pytest processes (pytest-xdist): most tests wait on loopback ssh and the emulator's
# transitions rather than on the CPU, so two halve the wall time on a 2-core machine. Work
# stealing evens out the few minutes-long end-to-end runs. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP) $(ENGINE_STAMP)
	@scripts/install-test-deps.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# ruff, the type checker over console/ and the layer table's import contracts (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) $(ENGINE_STAMP)
	$(BIN)/python bench/fleet_list.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/logtail.py
	$(BIN)/python bench/probe.py
	$(BIN)/python bench/multi_engine.py
	$(BIN)/python bench/long_lines.py

clean:
	rm -rf $(VENV) $(ENGINE_VENV) .pytest_cache
