# lcnet: `make run` trains the youtube_faces experiment; `make test` runs the tests.
# Both set up .venv from setup.cfg by themselves on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Simulated CPU devices for the sharding tests, and only for them: on 2 cores a one-device
# program runs 1.2-1.4x slower when the CPU backend is split into 8 (make run must not see it).
SIM_DEVICES := --xla_force_host_platform_device_count=8
test test-slow test-notebooks: export XLA_FLAGS ?= $(SIM_DEVICES)

.PHONY: install test test-slow test-notebooks run bench clean strip-notebooks

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=10 tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=10 tests

run: $(STAMP)
	$(PY) -m experiments.youtube_faces $(ARGS)

bench: $(STAMP)
	XLA_FLAGS= taskset -c 1 $(PY) -m benchmarks.local_layer --out BENCHMARKS.local_layer.json

strip-notebooks: $(STAMP)
	$(VENV)/bin/nbstripout experiments/notebooks/*.ipynb

test-notebooks: $(STAMP)
	$(PY) -m pytest -q -m notebooks tests/test_notebooks.py

clean:
	rm -rf $(VENV) build *.egg-info
