# Everything runs from a local virtual environment, created on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo run test lint bench vendor-charts clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install   ## the service on the shipped recording, with its own simulated exchange
	$(BIN)/marketdata demo

run: install    ## the service against the exchange configured in the environment / .env
	$(BIN)/marketdata serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy app
	@out=$$($(BIN)/lint-imports --no-cache 2>&1) || { echo "$$out"; exit 1; }; echo "$$out" | grep '^Contracts:'

test: lint      ## lint, types, then the whole test suite
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench

vendor-charts:  ## refresh the dashboard's chart library from the npm registry (VERSION=5.2.1 to pick one)
	scripts/vendor-lightweight-charts.sh $(VERSION)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
