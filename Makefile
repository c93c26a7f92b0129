# Every target the README names. `make test` and `make demo` need only python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install bytecode test test-fast demo verify lint bench bench-quick bench-peers clean

$(BIN)/queuectl: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,redis,dashboard]'
	@touch $@

install: $(BIN)/queuectl

# Where PYTHONDONTWRITEBYTECODE is set (some CI images set it), nothing writes the package's
# .pyc files, and every `queuectl` process and worker then compiles it from source: 70 ms more
# per command, measured. compileall writes them whatever that variable says.
bytecode: install
	$(BIN)/python -m compileall -q queuectl

test: bytecode
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder tests

test-fast: bytecode
	$(BIN)/python -m pytest -q -m "not slow" tests

# The README's "Complete Workflow Demo", in a throw-away data directory.
demo: install
	@set -e; d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	export QUEUECTL_STORAGE_PATH="$$d/queuectl_data"; q="$(CURDIR)/$(BIN)/queuectl"; \
	run() { echo; echo "\$$ queuectl $$*"; "$$q" "$$@"; }; \
	run enqueue "sleep 2"; \
	run enqueue "echo 'Hello World'"; \
	run enqueue invalid_command --max-retries 1; \
	run status; \
	run start --count 2 --timeout 8; \
	run status; \
	run list --state completed; \
	run dlq list; \
	bad=$$("$$q" list --state dead | awk 'NR==3 {print $$1}'); \
	run dlq retry "$$bad"; \
	run list --state pending

verify: install
	$(BIN)/python verify_all.py

lint: install
	$(BIN)/ruff check queuectl tests bench verify_all.py setup.py

bench: bytecode
	$(BIN)/python bench/run.py

bench-quick: bytecode
	$(BIN)/python bench/run.py --quick

bench-peers:
	bash bench/peers.sh

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache
