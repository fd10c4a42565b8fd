# Aegis Event Bus: the two commands of the README are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PG_URL ?= postgres://postgres@127.0.0.1:5432/aegis
STAMP := $(VENV)/.installed

.PHONY: run test test-sqlite test-pg test-browser lint typecheck security install migrate bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

## Run every role on SQLite (web, dispatcher, bridge, embedded broker, 3 simulated agents), printing an admin
## login; run_all migrates first. `make run PORT=8001 BROKER_PORT=18831` for other ports. Ctrl-C stops it.
PORT ?= 8000
BROKER_PORT ?= 18830
run: install
	@$(BIN)/python manage.py run_all --port $(PORT) --broker-port $(BROKER_PORT)

## The whole test suite: lint, types, then every test on SQLite and on PostgreSQL.
## The browser tests (tests/browser) run once, in the SQLite pass: they start their own
## control plane (run_all on a fresh SQLite file), so the PostgreSQL pass would only repeat them.
test: install lint typecheck security test-sqlite test-pg

test-sqlite: install
	$(BIN)/pytest -q -p no:cacheprovider

test-pg: install
	DATABASE_URL=$(PG_URL) $(BIN)/pytest -q -p no:cacheprovider --ignore=tests/browser

## Only the browser tests (headless Debian chromium); screenshots and role logs in test-artifacts/browser/.
test-browser: install
	$(BIN)/pytest -q -p no:cacheprovider tests/browser

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # the floors: contracts in pyproject.toml, docs/architecture.md
	DATA_DIR=$$(mktemp -d) $(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null

## bandit over the code and pip-audit over the requirements (skipped, with a message, when offline).
security: install
	VENV=$(VENV) scripts/security_scan.sh

typecheck: install
	$(BIN)/mypy .

bench: install
	DATABASE_URL=$(PG_URL) $(BIN)/python bench/queue_throughput.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
