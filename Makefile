# One command surface. Every target installs first (a no-op when .venv is up to date),
# so `make demo` and `make test` work on a machine that only has python3.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# The system tier mostly waits on processes it started, so two pytest workers halve its time
# even on two cores; whole files go to one worker, as their fixtures are per module.
TEST_WORKERS ?= 2

.PHONY: install browser demo up test test-fast bench soak soak-backfill soak-retention lint \
	gpu-check

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

# Statements, WAL bytes and Postgres CPU per job on the hot path, on a private cluster
# with pg_stat_statements; about a minute. docs/scaling.md reads capacity from them.
bench-postgres: install
	$(VENV)/bin/python -m tests.bench.postgres_cost

soak: install
	$(VENV)/bin/python -m tests.soak

soak-backfill: install
	$(VENV)/bin/python -m tests.soak.backfill

# 10,000 jobs with retention on: the bucket and the jobs table empty as retention allows.
soak-retention: install
	$(VENV)/bin/python -m tests.soak.retention

# On a machine with an NVIDIA GPU, installed with `pip install -e '.[gpu]'` (or without vLLM:
# '.[worker]'), not by `make install`, whose vLLM is the CPU build: the worker's engine path
# against the raw engine on a random-weight Qwen2-VL-2B. Never part of `make test`.
# GPU_CHECK_ARGS passes options (`--images 100 --engine transformers`; --help lists them).
GPU_CHECK_PYTHON ?= $(shell test -x $(VENV)/bin/python && echo $(VENV)/bin/python || echo $(PYTHON))
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_CHECK_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

lint: install
	$(VENV)/bin/python -m ruff check .
