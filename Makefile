# lcnet: `make run` trains the youtube_faces experiment; `make test` lints and runs the tests on
# both supported Python lines. Every target sets up its venv from setup.cfg by itself.
#
# Python lines: 3.11 (.venv; the newest jax for it is 0.10.x) and 3.12 (.venv-py312; jax 0.12.x).
# On these machines pyenv provides 3.12 (PYENV_VERSION=3.12.1); elsewhere any python3.12 on PATH.
PYTHON ?= python3.11
PYTHON312 ?= $(shell PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12 \
  || ls -d $(HOME)/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
VENV := .venv
VENV312 := .venv-py312
PY := $(VENV)/bin/python
# Simulated CPU devices for the sharding tests, and only for them: on 2 cores a one-device
# program runs 1.2-1.4x slower when the CPU backend is split into 8 (make run must not see it).
SIM_DEVICES := --xla_force_host_platform_device_count=8
test test-py311 test-py312 test-slow test-notebooks: export XLA_FLAGS ?= $(SIM_DEVICES)
PYTEST := -m pytest -q -x --durations=10 tests

.PHONY: install test test-py311 test-py312 lint test-slow test-notebooks run bench clean strip-notebooks

$(VENV)/.installed: setup.cfg pyproject.toml lcnet/face_archives.py lcnet/footage.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m lcnet.face_archives
	$(PY) -m lcnet.footage
	touch $@

$(VENV312)/.installed: setup.cfg pyproject.toml lcnet/face_archives.py lcnet/footage.py
	@test -n "$(PYTHON312)" || { echo "make test needs Python 3.12 for its second line: none found" \
	  "(tried pyenv 3.12.1 and python3.12 on PATH). Install it, or pass PYTHON312=/path/to/python3.12"; exit 1; }
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q --upgrade pip
	$(VENV312)/bin/python -m pip install -q -e '.[test]'
	$(VENV312)/bin/python -m lcnet.face_archives
	$(VENV312)/bin/python -m lcnet.footage
	touch $@

install: $(VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check lcnet experiments benchmarks tests

test: lint test-py311 test-py312

test-py311: $(VENV)/.installed
	$(PY) -c 'import sys, jax; print("Python", sys.version.split()[0], "jax", jax.__version__)'
	$(PY) $(PYTEST)

test-py312: $(VENV312)/.installed
	$(VENV312)/bin/python -c 'import sys, jax; print("Python", sys.version.split()[0], "jax", jax.__version__)'
	$(VENV312)/bin/python $(PYTEST)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow --durations=10 tests

run: $(VENV)/.installed
	$(PY) -m experiments.youtube_faces $(ARGS)

bench: $(VENV)/.installed
	XLA_FLAGS= taskset -c 1 $(PY) -m benchmarks.local_layer --out BENCHMARKS.local_layer.json

strip-notebooks: $(VENV)/.installed
	$(VENV)/bin/nbstripout experiments/notebooks/*.ipynb

test-notebooks: $(VENV)/.installed
	$(PY) -m pytest -q -m notebooks tests/test_notebooks.py

clean:
	rm -rf $(VENV) $(VENV312) build *.egg-info
