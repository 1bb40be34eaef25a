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
# Two pytest workers, each taking a whole test file at a time (module fixtures built once): on 2
# cores the suite ran in 14 min 25 s / 11 min 6 s (Python 3.11 / 3.12) against 19 min 18 s /
# 17 min 32 s in one process (AVX2, 2026-12-03; BENCHMARKS.md, "The suite in two workers"). Its
# largest process peaked at 10 GB: raise TEST_WORKERS only with the cores and memory for it.
TEST_WORKERS ?= 2
PYTEST := -m pytest -q -x -n $(TEST_WORKERS) --dist loadfile --durations=10 tests
# What make install adds to the core: the experiment's and the tests' extras; CUDA=1 adds jax's
# CUDA build (`make install CUDA=1` on an NVIDIA GPU machine).
comma := ,
# pip install, tried again on failure: pip retries a refused connection but not one cut short
# mid-file (IncompleteRead), which failed a fresh machine's install here on 2026-12-03.
pip_install = for try in 1 2 3; do $(1) -m pip install -q $(2) && break; test $$try = 3 && exit 1; \
  echo "pip install failed (try $$try of 3): trying again in 20 s" >&2; sleep 20; done
EXTRAS := experiment,test$(if $(filter 1,$(CUDA)),$(comma)cuda)

.PHONY: install test test-py311 test-py312 lint test-slow test-notebooks test-core test-browser test-slurm \
  run bench clean \
  strip-notebooks

$(VENV)/.installed: setup.cfg pyproject.toml lcnet/face_archives.py lcnet/footage.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(call pip_install,$(PY),--upgrade pip)
	$(call pip_install,$(PY),-e '.[$(EXTRAS)]')
	$(PY) -m lcnet.face_archives
	$(PY) -m lcnet.footage
	touch $@

$(VENV312)/.installed: setup.cfg pyproject.toml lcnet/face_archives.py lcnet/footage.py
	@test -n "$(PYTHON312)" || { echo "make test needs Python 3.12 for its second line: none found" \
	  "(tried pyenv 3.12.1 and python3.12 on PATH). Install it, or pass PYTHON312=/path/to/python3.12"; exit 1; }
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(call pip_install,$(VENV312)/bin/python,--upgrade pip)
	$(call pip_install,$(VENV312)/bin/python,-e '.[$(EXTRAS)]')
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
	@echo "The Le-2012 layer again, with glibc's malloc as it comes and with lcnet.hostmem.keep_heap():"
	XLA_FLAGS= $(PY) -m benchmarks.host_malloc --what layer --rounds 4 --steps 9 \
	  --out BENCHMARKS.host_malloc_layer.json

strip-notebooks: $(VENV)/.installed
	$(VENV)/bin/nbstripout experiments/notebooks/*.ipynb

test-notebooks: $(VENV)/.installed
	$(PY) -m pytest -q -m notebooks tests/test_notebooks.py

# `pip install lcnet` alone (the core dependencies) in a fresh venv: lcnet.ops, model, train import
# and train without the extras. Not in `make test` (it builds a venv from nothing: ~2 min).
test-core:
	rm -rf .venv-core && $(PYTHON) -m venv .venv-core
	$(call pip_install,.venv-core/bin/python,--upgrade pip)
	$(call pip_install,.venv-core/bin/python,-e . 'pytest>=8$(comma)<10')
	XLA_FLAGS= .venv-core/bin/python -m pytest -q -m core_install tests/test_core_install.py

# report.html of the tiny run in headless Chromium: every figure loads, the verdict and the tables
# show; the screenshot lands in the test's run directory. Installs Debian's chromium and
# chromium-driver if missing (apt, as root or with sudo) and selenium. Not in `make test`.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(VENV)/.installed
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }
	$(PY) -m pip install -q 'selenium>=4.20,<5'
	$(PY) -m pytest -q -m browser tests/test_report_browser.py

# The experiment under a real Slurm: a one-node cluster on 127.0.0.1 (experiments/slurm/
# local_cluster.sh; Debian's slurm-wlm and munge, installed here if missing; run as root), sbatch
# of experiments/slurm/youtube_faces.sbatch on 2 tasks. Not in `make test` (about a minute once
# installed).
test-slurm: $(VENV)/.installed
	command -v slurmctld >/dev/null && command -v munged >/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; }
	$(PY) -m pytest -q -m slurm tests/test_slurm.py

clean:
	rm -rf $(VENV) $(VENV312) .venv-core build *.egg-info
