# e4e: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU wheel of torch: a plain `torch` requirement would pull gigabytes of CUDA packages.
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
LOCAL_WHEELS ?= /opt/wheels
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# two pytest-xdist workers (a file's tests stay together, so its module fixtures are built once); 0: one process
TEST_WORKERS ?= 2

.PHONY: install test test-fast demo bench clean help

help:
	@echo "make install  - create .venv and install e4e (editable, with test extras)"
	@echo "make test     - install if needed, then run every test"
	@echo "make demo     - install, fetch weights, align + invert + edit a sample photo"
	@echo "make bench    - speed and memory benchmark (prints tables, writes bench/results*.json)"

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || \
	  $(PIP) install --quiet $(if $(wildcard $(LOCAL_WHEELS)),--find-links $(LOCAL_WHEELS)) "$(TORCH_SPEC)" || \
	  $(PIP) install --quiet --index-url $(TORCH_CPU_INDEX) torch
	$(PIP) install --quiet -e ".[test,ui]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=30 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	bash scripts/demo.sh

bench: $(STAMP)
	$(PY) bench/bench.py --no-first-photo
	$(PY) bench/bench_first_photo.py --runs 2
	$(PY) bench/bench_first_photo.py --runs 2 --isa avx2 --no-ui
	$(PY) bench/bench_refine.py --repeat 2
	$(PY) bench/bench_pti.py --steps 4
	$(PY) bench/bench_upsample.py
	$(PY) bench/bench_upsample.py --isa avx2
	$(PY) bench/bench_precision.py
	$(PY) bench/bench_styleclip.py
	$(PY) bench/bench_video.py --cases church_256_s3,ffhq_1024_s1 --precisions auto --frames 12
	$(PY) bench/bench_video_smoothing.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
