# `make demo` and `make test` work on a fresh machine: they create .venv, install the project, run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,all
PYTEST_ARGS ?=

.PHONY: demo test test-all bench gpu venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/torchspine demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Issue 13's goals, each ratio printed beside its target (docs/benchmarks.md). Goal 1 needs the
# TF venv (TORCHSPINE_TF_PYTHON); goals 2-3 accuracy rows need the demo's model (make demo).
bench: $(STAMP)
	$(PY) benchmarks/bench_tf.py --threads 1
	$(PY) benchmarks/bench_tf.py --threads 2 --runs 3 --reps 7  # the goal's clock: two threads, wall time; needs a quiet machine
	$(PY) benchmarks/bench_deploy.py --threads 1
	$(PY) benchmarks/bench_onnx_sizes.py
	$(PY) benchmarks/bench_training.py --matrix --threads 1 --size 512 --batch 2 --steps 2 --repeats 2
	$(PY) benchmarks/bench_backbone.py

# On a machine with a CUDA card: the training checks and the GPU benchmark, tables in gpu-results/.
gpu: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_session.sh

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
