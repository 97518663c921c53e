# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs everything, runs the end-to-end demo on the embedded default
#   make test   creates .venv, installs everything, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= cpu,train,dev,bench,scale
# Triton serving has its own environment: nvidia-pytriton pins numpy<2, the training stack needs numpy 2.
SERVE_VENV ?= .venv-serve

.PHONY: install serve-env demo lint test test-fast clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a range that admits a newer torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# the scale report's llama.cpp peer (compiles llama.cpp: minutes on 2 cores); the tests need it, the demo does not
$(VENV)/.peers: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e ".[peers]"
	touch $@

# about a minute on a fresh machine (the PyTriton wheel ships tritonserver; hnswlib builds from source)
$(SERVE_VENV)/.installed: pyproject.toml constraints.txt
	test -x $(SERVE_VENV)/bin/python || python3 -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install -q -c constraints.txt -e ".[cpu,serve]"
	touch $@

serve-env: $(SERVE_VENV)/.installed

demo: install
	$(VENV)/bin/mmsrarec-edge demo --out work/demo

# ruff (style, likely bugs) and the import-linter layering contracts in pyproject.toml (the runtime never imports torch)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint serve-env $(VENV)/.peers
	$(VENV)/bin/pytest -q

test-fast: lint serve-env $(VENV)/.peers
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf work .pytest_cache
