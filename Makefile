# The two set-up commands of the README: each installs what it needs on a fresh machine first,
# into the checkout's own virtual environment (scripts/setup.sh), and runs from it.
.PHONY: serve test lint

VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# The tests start the venv's tools by name (adain, openapi-python-client, hadolint, ...).
export VENV
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(BIN):$(PATH)

serve:
	bash scripts/setup.sh
	$(BIN)/adain serve

test:
	bash scripts/setup.sh --test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint:
	bash scripts/setup.sh --test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
