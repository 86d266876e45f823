# One command surface. Every target installs first (a no-op when .venv is up to date),
# so `make demo` and `make test` work on a machine that only has python3.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# The system tier mostly waits on processes it started, so two pytest workers halve its time
# even on two cores; whole files go to one worker, as their fixtures are per module.
TEST_WORKERS ?= 2

.PHONY: install browser demo up test test-fast bench soak soak-backfill soak-retention lint

install:
	PYTHON=$(PYTHON) VLMQ_VENV=$(VENV) bash scripts/install.sh

# Debian's chromium for the console's browser test; only the full suite needs it.
browser:
	bash scripts/install-browser.sh

demo: install
	$(VENV)/bin/vlmq demo

# A local stack (API, worker, control process) until Ctrl-C; `vlmq up --help` for options.
up: install
	$(VENV)/bin/vlmq up

test: install browser
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

# The unit tier alone: no Postgres, Redis, S3 or subprocesses; well under a minute.
test-fast: install
	$(VENV)/bin/python -m pytest -q --durations=5 tests/unit $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/python -m tests.bench

soak: install
	$(VENV)/bin/python -m tests.soak

soak-backfill: install
	$(VENV)/bin/python -m tests.soak.backfill

# 10,000 jobs with retention on: the bucket and the jobs table empty as retention allows.
soak-retention: install
	$(VENV)/bin/python -m tests.soak.retention

lint: install
	$(VENV)/bin/python -m ruff check .
