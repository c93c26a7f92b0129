# Every target the README names. `make test` and `make demo` need only python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast demo verify lint bench bench-quick clean

$(BIN)/queuectl: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/queuectl

test: install
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: install
	@$(BIN)/python scripts/demo.py

verify: install
	$(BIN)/python verify_all.py

lint: install
	$(BIN)/ruff check queuectl tests bench verify_all.py setup.py

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache
