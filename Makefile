# Two commands do all the set-up on a fresh machine (Python 3.11+ and git, offline but for PyPI):
#   make repro   create .venv if missing, install, run the whole DVC pipeline
#   make test    create .venv if missing, install, run the test suite
#   make lint    ruff (rules in pyproject.toml); .ci/run runs it before the tests
# All install effifusion[pipeline,dev] as pinned in requirements.lock. Enhancing alone needs only
# `pip install .` in a clone (numpy, soundfile, onnxruntime, tqdm: no torch).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: repro test test-fast lint bench gpu-check lock clean-venv

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# dvc needs a git repository with a commit; a fresh clone has both.
repro: $(STAMP)
	test -d .dvc || $(BIN)/dvc init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# One pytest-xdist worker per core, each with one math thread (tests/conftest.py), a test file per
# worker at a time: on the 2-core machine 965-1116 s against 1895 s in one process (2026-12-03, fresh
# clone; docs/benchmarks.md). xdist's own file order (most tests first) measured faster than starting
# the longest end-to-end files first (965 s vs 1065-1081 s). TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The suite without the tests marked slow (end-to-end DVC pipelines and pipeline passes, installs into
# fresh venvs, the paper-size and pretrained models): quick feedback while working; `make test` (and CI)
# runs everything.
test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/bench_train.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/bench_infer.py

# Paper-size training step on one CUDA GPU, <= 8 minutes: fp32 / bf16 / bf16 + torch.compile steps/s,
# PESQ wait, peak memory, falling losses, torchrun + NCCL + DDP. Prints one line and exits 0 without CUDA.
gpu-check: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/gpu_check.py $(GPU_CHECK_ARGS)

# Re-pin every dependency of effifusion[pipeline,dev] (needs uv: pip install uv). One universal lock:
# platform-only packages carry markers (CUDA wheels: sys_platform == 'linux'), so the same file installs
# on Linux (x86_64, aarch64) and macOS 14+ on Apple silicon (torch 2.11 and onnxruntime 1.31 have no
# Intel-mac wheels). Pins already in the file are kept unless UPGRADE=--upgrade.
lock:
	uv pip compile pyproject.toml --extra pipeline --extra dev --universal --python-version 3.11 $(UPGRADE) -o requirements.lock

clean-venv:
	rm -rf $(VENV)
