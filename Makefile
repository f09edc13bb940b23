# Two commands: `make run` and `make test` each set up everything they need on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?= etc/tacore.toml

PREFIX ?= /opt/tacore
SYSCONFDIR ?= /etc/tacore
UNITDIR ?= /etc/systemd/system
SYSUSERSDIR ?= /etc/sysusers.d
INSTALL_FROM ?= .
PIP_ARGS ?=

DURATION ?= 30m
FUZZ_EXAMPLES ?= 20000

RUNS ?= 3

.PHONY: run test test-busy test-systemd check bench soak fuzz install clean

run: $(STAMP)  ## start tacored in the foreground on the default config
	$(BIN)/tacored --config $(CONFIG)

test: $(STAMP)  ## run the whole test suite
	$(BIN)/pytest $(PYTEST_ARGS)

test-busy: $(STAMP)  ## the suite RUNS (default 3) times beside a busy loop pinned to core 0
	bash tests/busy.sh $(RUNS) $(BIN)/pytest

test-systemd: $(STAMP)  ## boot a real systemd in a container and test the unit (root)
	bash tests/systemd/run.sh

bench: $(STAMP)  ## broker against zmq.proxy, supervision and spawn timings, scale, state size (~12 min)
	$(BIN)/python bench/broker.py --json bench/results-broker.json
	$(BIN)/python bench/supervision.py --json bench/results-supervision.json
	$(BIN)/python bench/spawn.py --json bench/results-spawn.json
	$(BIN)/python bench/scale.py --json bench/results-scale.json
	$(BIN)/python bench/state_size.py

soak: $(STAMP)  ## chaos under load for DURATION (default 30m), then the figures
	$(BIN)/python -m tests.chaos --duration $(DURATION)

fuzz: $(STAMP)  ## the hypothesis fuzz tests with FUZZ_EXAMPLES examples each
	TACORE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -p no:cacheprovider -o timeout=0 \
		tests/test_fuzz.py tests/test_resilience.py -k "fuzz or garbage" -q

install:  ## as root: venv in $(PREFIX), $(SYSCONFDIR)/tacore.toml, group tacore-clients, the unit
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet $(PIP_ARGS) $(INSTALL_FROM)
	install -D -m 0644 systemd/tacore.sysusers $(SYSUSERSDIR)/tacore.conf
	if command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERSDIR)/tacore.conf; \
	else getent group tacore-clients >/dev/null || groupadd --system tacore-clients; fi
	install -d -m 0755 $(SYSCONFDIR)
	test -e $(SYSCONFDIR)/tacore.toml || { sed \
		-e 's|^# runtime_dir = "/run/tacore"|runtime_dir = "/run/tacore"|' \
		-e 's|^# state_dir = "/var/lib/tacore"|state_dir = "/var/lib/tacore"|' \
		-e 's|^# group = "tacore-clients"|group = "tacore-clients"|' \
		etc/tacore.toml > $(SYSCONFDIR)/tacore.toml && chmod 0644 $(SYSCONFDIR)/tacore.toml; }
	install -D -m 0644 systemd/tacore.service $(UNITDIR)/tacore.service
	-systemctl daemon-reload 2>/dev/null

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
