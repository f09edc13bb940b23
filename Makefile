# Two commands: `make run` and `make test` each set up everything they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?= etc/tacore.toml

.PHONY: run test check clean

run: $(STAMP)  ## start tacored in the foreground on the default config
	$(BIN)/tacored --config $(CONFIG)

test: $(STAMP)  ## run the whole test suite
	$(BIN)/pytest $(PYTEST_ARGS)

check: $(STAMP)  ## validate the configuration and print it
	$(BIN)/tacored --check --config $(CONFIG)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "tacore needs Python 3.11 or newer (found: $$($(PYTHON) --version 2>&1))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ rm -rf $(VENV); echo "python3 -m venv failed: on Debian, apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
