# Two commands matter:  `make run`  and  `make test`.  Both set up what they need.
#
#   make setup    the app's virtual environment (.venv) with the CPU build of torch
#   make index    build/refresh the sample knowledge base (docs/) into indexes/default
#   make run      setup + index + LLM server + Streamlit app (Ctrl-C stops both)
#   make test     setup (app + LLM server + models) + the whole test suite
#   make test-fast  the tests that need no LLM server, browser or PostgreSQL
#   make crash-test  the SIGKILL loop with 20 kills (make test runs 5)
#   make llm      only the LLM server, in the foreground (see mk/llm.mk)
#   make lint     ruff + mypy
#   make docs     regenerate the README's settings table and CLI reference (cog)
#   make bench-setup  what bench/*.py compare against (see BENCHMARKS.md)
#   make bench-api-load  bench/load.py through `rag serve` beside the library (needs `make llm`)

SHELL := /bin/bash
BOOT_PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
INDEX ?= indexes/default
SAMPLE ?= docs
PYTEST_ARGS ?=
# The app listens on loopback only unless told; another address needs a login
# (RAG_AUTH=oidc or local) or RAG_INSECURE_NO_AUTH=1: see serving/run.py.
APP_HOST ?= 127.0.0.1

include mk/llm.mk



.PHONY: setup index run test test-fast crash-test lint docs clean system-setup bench-setup bench-api-load

# torch first and pinned: this machine's pip takes the CPU build from disk,
# while an unpinned torch would pull the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(BOOT_PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

index: setup
	$(BIN)/ingest $(SAMPLE) --index $(INDEX) --sync

run: setup llm-setup index
	$(PYTHON) -m serving.run --index $(INDEX) --host $(APP_HOST)

test: setup llm-setup llm-setup-tiny system-setup
	$(BIN)/pytest $(PYTEST_ARGS)

# While you work: no vLLM, Chromium or PostgreSQL (the markers are in
# pyproject.toml; tests/conftest.py marks a test by the servers it takes),
# spread over the cores with pytest-xdist (one worker per core, at most 4;
# each worker's torch gets its share of the cores, tests/conftest.py):
# on 2 cores, faster than one process (TEST_WORKERS=0). `make test` runs
# every test, in one process: the real servers are started once per
# session, not once per worker.
FAST_MARKERS := not llm and not browser and not postgres and not slow
TEST_WORKERS ?= auto
test-fast: setup
	$(BIN)/pytest -q -m "$(FAST_MARKERS)" -n $(TEST_WORKERS) --maxprocesses 4 --dist worksteal $(PYTEST_ARGS)

# The full SIGKILL loop: 20 kills (`make test` runs the same test with 5).
crash-test: setup
	KBQA_KILL_RUNS=20 $(BIN)/pytest -m slow tests/test_crash.py -s $(PYTEST_ARGS)

# Debian packages the tests drive: Chromium for the end-to-end browser test
# (Playwright drives it; Playwright's own browser download is not needed),
# tesseract for the --ocr path and a PostgreSQL server for the app database
# (tests/postgres_server.py; pg_ctlcluster comes with the server package,
# whose own binaries are not on PATH).
SYSTEM_PACKAGES := chromium:chromium tesseract:tesseract-ocr pg_ctlcluster:postgresql
system-setup:
	@missing=$$(for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null || echo $${pair#*:}; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q $$missing || \
	  { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; }; fi

# The benchmarks' peers (bench/ingestion.py runs the LangChain tutorial pipeline).
bench-setup: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'

# The same questions through the library and through `rag serve` (started by
# the script on a loopback port), side by side with the API's overhead; at
# most 4 requests at once. Start the LLM server first: `make llm` (LLM_PORT).
LOAD_MODEL ?= smollm2-135m
LOAD_ARGS ?= --answers 1,2,4 --rounds 2 --searches 1,4 --search-rounds 50
bench-api-load: setup index
	$(PYTHON) bench/load.py --url http://$(LLM_HOST):$(LLM_PORT)/v1 --model $(LOAD_MODEL) \
	    --index $(INDEX) --via both $(LOAD_ARGS)

lint: setup
	$(BIN)/ruff check rag ingest team core cli api serving ui tests bench tools streamlit_app.py
	$(BIN)/ruff format --check rag ingest team core cli api serving ui tests bench tools streamlit_app.py
	$(BIN)/mypy rag ingest team core cli api serving ui tools

# The README's generated blocks (tools/readme_docs.py), from the code: `python -m`
# puts this checkout first on sys.path. tests/test_docs_drift.py checks them.
docs: setup
	$(PYTHON) -m cogapp -r README.md

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
