# The two commands of the README contract: `make demo` and `make test`.
# Everything else here is what those two need, plus the habits (lint, bench, messages).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,trainer,deid
DEMO_HOST ?= 127.0.0.1
DEMO_PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: setup demo test lint format messages services bench access-matrix clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

setup: $(VENV)/.installed

# Installs and starts what the integration and browser tests use (Chromium, fonts, Slurm).
# Needs root and apt; elsewhere those tests skip (CI sets MEDCTL_REQUIRE_SERVICES=1, so there
# they fail instead of skipping).
services:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then deploy/ci/services.sh; \
	else echo "services: not root or no apt-get; browser and Slurm tests will skip"; fi

demo: setup
	@deploy/demo.sh "$(DEMO_HOST)" "$(DEMO_PORT)"

test: setup services
	MEDCTL_DEV_SECRETS=1 $(BIN)/pytest -q -rs $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy trainer apps/deid/engine apps/jobs/schedulers controlplane/env.py

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Regenerates the zh_Hans catalog from the sources and compiles it (needs GNU gettext).
# The compiled .mo is committed so a fresh machine needs no gettext.
messages:
	MEDCTL_DEV_SECRETS=1 $(BIN)/python manage.py makemessages -l zh_Hans --ignore '.venv/*' --ignore 'var/*'
	MEDCTL_DEV_SECRETS=1 $(BIN)/python manage.py compilemessages -l zh_Hans --ignore '.venv/*'

access-matrix:
	MEDCTL_DEV_SECRETS=1 $(BIN)/python manage.py access_matrix --write docs/access-matrix.md

bench: setup
	MEDCTL_DEV_SECRETS=1 $(BIN)/python bench/audit_bench.py

clean:
	rm -rf var/broker var/static
