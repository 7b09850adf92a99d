# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install Pasture, run the main job (no download needed)
#   make test   create .venv, install Pasture with test extras, run every test
# and, for the edit loop, make test-fast: lint and the tests not marked slow (under a minute)
PYTHON ?= python3.11
VENV ?= .venv
# A torch build pip can find. Override for GPU machines, e.g. TORCH=torch (any release >= 2.5).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# The full data set when present (as in CI); without it, tests run on tests/assets/data.
SHARED_DATA ?= $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export PASTURE_DATA ?= $(SHARED_DATA)
endif
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[gguf,data,ray,test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/pasture demo --workdir runs/demo

# The chat-page test drives Debian's chromium with Selenium; installed here when missing (root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "make: the chat-page test needs chromium and chromium-driver (apt-get install)"

test: install browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q --durations=25

test-fast: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs
