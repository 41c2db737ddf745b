# The README's two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-citus lint typecheck schema bench install clean lock broker browser console

# Installs the locked versions (requirements.lock), then the project itself without resolving again.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

## Re-resolve pyproject.toml's dependencies (runtime and dev) into requirements.lock; commit the result.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -e ".[embedded,otel,dev]"
	{ sed -n '1,2p' requirements.lock; .venv-lock/bin/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .venv-lock

install: $(STAMP)

## Start the server: venv, install, embedded PostgreSQL, migrate, bootstrap, serve on :8000.
run: $(STAMP) console
	$(BIN)/tenantry migrate
	$(BIN)/tenantry bootstrap
	$(BIN)/tenantry serve

# The MQTT tests' real broker: Debian's RabbitMQ (its MQTT and HTTP-auth plugins ship with it),
# installed where this machine lets us; elsewhere tests/test_mqtt.py skips and says why.
RABBITMQ := /usr/lib/rabbitmq/bin/rabbitmq-server
broker:
	@test -x $(RABBITMQ) || { command -v apt-get >/dev/null && [ -w /var/lib/dpkg ] && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; }; } || \
		echo "RabbitMQ could not be installed here: the MQTT tests will skip"

# The reference console (console/: Vite + React + urql + graphql-ws, types by graphql-codegen from
# schema.graphql, checked by tsc --strict), built into console/dist for `serve` to answer /console.
# Without npm it is skipped with a message, and /console says how to build it.
CONSOLE_SOURCES := $(shell find console/src -type f -not -path 'console/src/gql/*' 2>/dev/null) \
	console/package.json console/package-lock.json console/index.html console/vite.config.ts \
	console/codegen.ts console/tsconfig.json schema.graphql
console/dist/index.html: $(CONSOLE_SOURCES)
	@if command -v npm >/dev/null; then \
		cd console && npm ci --no-audit --no-fund --loglevel=error && npm run build; \
	else echo "npm is not installed: the console is not built (tests/test_console.py will skip)"; fi
console: console/dist/index.html

# The console's browser tests drive Debian's Chromium through Playwright (never a downloaded browser);
# where it cannot be installed, tests/test_console.py skips and says why.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ -w /var/lib/dpkg ] && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
		echo "Chromium could not be installed here: the console's browser tests will skip"

## Run the test suite against a real (embedded) PostgreSQL, plus lint and type checks.
test: $(STAMP) broker browser console
	$(BIN)/ruff check app tests bench migrations
	$(BIN)/mypy
	$(BIN)/pytest

## The scale-out part of the suite on a throwaway three-node Citus cluster (see tests/citus/run.sh).
test-citus: $(STAMP)
	bash tests/citus/run.sh

# The code is formatted by hand at 120 columns (ruff's formatter would rewrap most files), so
# lint is ruff's checks; mypy strict runs in `make typecheck` and `make test`.
lint: $(STAMP)
	$(BIN)/ruff check app tests bench migrations

typecheck: $(STAMP)
	$(BIN)/mypy

## Regenerate the committed schema.graphql from the code.
schema: $(STAMP)
	$(BIN)/tenantry export-schema --output schema.graphql

bench: $(STAMP)
	$(BIN)/python -m bench.provision
	$(BIN)/python -m bench.routing
	$(BIN)/python -m bench.concurrency
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.list
	$(BIN)/python -m bench.usage
	$(BIN)/python -m bench.copy
	$(BIN)/python -m bench.registration
	$(BIN)/python -m bench.mqtt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
