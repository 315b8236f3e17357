# The two set-up commands of the README: each installs what it needs on a fresh machine first.
.PHONY: serve test lint

serve:
	bash scripts/setup.sh
	adain serve

test:
	bash scripts/setup.sh --test
	ruff check .
	python3 -m pytest -q

lint:
	ruff check . && ruff format --check .
