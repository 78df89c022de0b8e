# Developer entry points. `make test` builds .venv on a fresh machine by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN := $(if $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2),LD_PRELOAD=libjemalloc.so.2,)
export WANDB_MODE ?= disabled

.PHONY: install test test-slow lint docs demo bench-data bench-step bench-quality gpu-check gpu-wheels clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[dev,cluster,docs]'
	touch $(STAMP)

install: $(STAMP)

# The fast suite (minutes on 2 cores); the slowest tests are listed at the end, to keep it fast.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/ruff format --check src tests scripts benchmarks
	$(VENV)/bin/pyright --pythonpath $(PY)

# The documentation site into site/, strictly (any warning fails). The test suite builds it too
# (tests/docs/test_site.py); this target installs the docs extra into an older .venv that lacks it.
DOCS_IMPORTS := mkdocs_gen_files, mkdocs_literate_nav, mkdocstrings_handlers.python, material
docs: $(STAMP)
	$(PY) -c "import $(DOCS_IMPORTS)" 2>/dev/null || $(PY) -m pip install -q -c requirements/constraints.txt -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict

demo: $(STAMP)
	$(RUN) $(PY) -m meta_kd_sr.cli.demo

bench-data: $(STAMP)
	$(RUN) $(PY) benchmarks/bench_data.py

bench-step: $(STAMP)
	$(RUN) $(PY) benchmarks/bench_step.py $(ARGS)

bench-quality: $(STAMP)
	$(RUN) $(PY) benchmarks/bench_quality.py $(ARGS)

# CUDA tests, paper-shape step costs, loader throughput: `make gpu-check` (ARGS=--dry: CPU code path).
GPU_CHECK_OUT ?= outputs/gpu_check
gpu-check: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_check.sh $(GPU_CHECK_OUT) $(ARGS)

# Wheels scripts/gpu_check.sh installs on a GPU machine without network (Python 3.12, x86-64 Linux).
GPU_WHEELS := hydra-core omegaconf antlr4-python3-runtime higher bicubic-pytorch
gpu-wheels: $(STAMP)
	mkdir -p .whl
	$(PY) -m pip wheel -q --no-deps -c requirements/constraints.txt -w .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache site
