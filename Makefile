# DropSlot: `make dev` runs the system, `make test` runs every test.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PY := .venv/bin/python
BOOKING_REPLICAS ?= 2

.PHONY: dev test test-unit test-e2e lint typecheck bench bench-tokens migrate bootstrap admin up down install snapshots clean help

help:
	@echo "make dev      - install, migrate and run every service behind the gateway on :8000"
	@echo "make test     - every test (unit, integration, end-to-end) against real PostgreSQL/RabbitMQ/Redis"
	@echo "make bench    - the drop-storm benchmark (bench/README.md)"
	@echo "make bench-tokens - what checking an access token costs, per signing algorithm"
	@echo "make admin EMAIL=... PASSWORD=...  - create a platform admin"
	@echo "make lint | typecheck | migrate | snapshots | up (docker compose) | down"

# uv is the one tool we need from outside the repo; fetch it from PyPI if it is missing.
$(UV):
	@echo "uv not found: installing it into .tools/ from PyPI"
	python3 -m venv .tools && .tools/bin/pip install -q uv

.venv/.installed: $(UV) pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --all-packages
	@touch $@

install: .venv/.installed

dev: install
	$(PY) -m dropslot_kit.dev --booking-replicas $(BOOKING_REPLICAS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check libs services tests bench

# Each service on its own (checked all at once, mypy reported import errors here that no single check does).
typecheck: install
	$(PY) -m mypy libs/kit/src libs/contracts/src
	@for s in services/*/src; do echo "mypy $$s"; $(PY) -m mypy $$s || exit 1; done

bootstrap: install
	$(PY) -m dropslot_kit.bootstrap

migrate: bootstrap
	$(PY) -m dropslot_kit.migrate all

snapshots: install
	$(PY) -m dropslot_contracts.snapshot --write

admin: install
	@test -n "$(EMAIL)" -a -n "$(PASSWORD)" || { echo "usage: make admin EMAIL=you@example.com PASSWORD=..."; exit 2; }
	$(PY) -m dropslot_identity.admin --email "$(EMAIL)" --password "$(PASSWORD)"

bench: install
	$(PY) bench/drop_storm.py $(BENCH_ARGS)

bench-tokens: install
	$(PY) bench/token_check.py

up:
	docker compose up --build

down:
	docker compose down -v

clean:
	rm -rf .venv .tools .pytest_cache .dev
