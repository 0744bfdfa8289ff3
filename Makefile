# The project's verbs. `make run` and `make test` bootstrap .venv on a fresh machine
# (only python3 needed) and re-install when requirements.txt changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Where nvidia-smi lists a GPU, JAX's CUDA build (requirements-gpu.txt), and `make run` and
# `make lab` run their kernels on JAX unless KERAS_BACKEND says otherwise; elsewhere the CPU
# build, with TensorFlow as the backend (requirements.txt).
GPU := $(shell nvidia-smi -L 2>/dev/null | grep -i gpu)
REQUIREMENTS := $(if $(GPU),requirements-gpu.txt,requirements.txt)

# Offline machines. `make wheelhouse` downloads every wheel the lab needs into WHEELHOUSE
# (default wheelhouse/): REQUIREMENTS, pip and setuptools, and the lab itself as a wheel. For
# another machine name its platform and Python, e.g. `make wheelhouse PLATFORM=
# manylinux_2_28_x86_64 PYTHON_VERSION=3.11 REQUIREMENTS=requirements-gpu.txt`. There,
# `make run WHEELHOUSE=dir` (or make test, make venv) installs from that folder only.
WHEELHOUSE ?=
PLATFORM ?=
PYTHON_VERSION ?=
PIP_FROM := $(if $(WHEELHOUSE),--no-index --find-links $(WHEELHOUSE))
PIP_INSTALL := $(PY) -m pip install --quiet $(PIP_FROM)
PLATFORM_ARGS := $(if $(PLATFORM),--platform $(PLATFORM)) \
	$(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
	$(if $(PLATFORM)$(PYTHON_VERSION),--only-binary=:all:)
# A machine that has a Keras backend already (a JAX or PyTorch image, say): REUSE_BACKEND=1
# makes the venv see the packages of the Python that creates it (--system-site-packages) and
# leaves out the pins of each backend that Python can import (jax and jaxlib, tensorflow, and
# the ml_dtypes they share), so that its own build, CUDA included, is the one used. TensorFlow
# is left out as well when KERAS_BACKEND names another backend found there (make test compares
# the backends with TensorFlow, so it keeps it).
VENV_ARGS ?=
ifdef REUSE_BACKEND
VENV_ARGS += --system-site-packages
REUSED := $(shell $(PYTHON) -c 'import importlib.util as u; print(*[n for n in ("tensorflow", "jax", "torch") if u.find_spec(n)])' 2>/dev/null)
SKIP_PINS := $(if $(filter jax,$(REUSED)),jax jaxlib) \
	$(if $(filter jax tensorflow,$(REUSED)),ml_dtypes) \
	$(if $(filter tensorflow,$(REUSED)),tensorflow tensorflow-cpu) \
	$(if $(and $(filter jax torch,$(KERAS_BACKEND)),$(filter $(KERAS_BACKEND),$(REUSED)), \
	$(if $(filter test,$(MAKECMDGOALS)),,1)),tensorflow tensorflow-cpu)
endif
empty :=
space := $(empty) $(empty)
SKIP_PATTERN := $(subst $(space),|,$(sort $(SKIP_PINS)))
REQ_HASH := $(shell (sha256sum $(REQUIREMENTS) pyproject.toml; $(if $(REUSE_BACKEND),echo 'reuse $(VENV_ARGS) $(SKIP_PATTERN)')) | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
DATA := data/synthetic_carpet
# Extra options: `make run RUN_ARGS="-p epochs 1"`, `make lab LAB_ARGS="--port 8890"`.
RUN_ARGS ?=
LAB_ARGS ?=
QUALITY_ARGS ?=
export PYTHONHASHSEED := 0
# For every process make starts, as for the kernels of a run: transparent huge pages for
# malloc's large maps, TensorFlow's BFC allocator on the CPU and its oneDNN kernels on every x86
# CPU (DEFAULTS in anomaly_utils/process_environment.py says why). A user's own values are kept.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1
export TF_CPU_ALLOCATOR_USE_BFC ?= true
export TF_ENABLE_ONEDNN_OPTS ?= 1

.PHONY: run test test-backends lab data notebooks figures bench bench-quality lint venv wheelhouse clean-runs

venv: $(STAMP)

$(STAMP): $(REQUIREMENTS) pyproject.toml
	@test -x $(PY) -a -z "$(VENV_ARGS)" || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PIP_INSTALL) --upgrade pip $(if $(WHEELHOUSE),"setuptools>=64")
ifneq ($(SKIP_PATTERN),)
	grep -v -E '^($(SKIP_PATTERN))(\[.*\])?==' $(REQUIREMENTS) > $(VENV)/requirements-reused.txt
	$(PIP_INSTALL) -r $(VENV)/requirements-reused.txt
else
	$(PIP_INSTALL) -r $(REQUIREMENTS)
endif
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

WHEELS := $(or $(WHEELHOUSE),wheelhouse)
HOST_PIP := $(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m pip
wheelhouse:
	@mkdir -p $(WHEELS)
	$(HOST_PIP) download --dest $(WHEELS) $(strip $(PLATFORM_ARGS)) -r $(REQUIREMENTS) pip "setuptools>=64"
	$(HOST_PIP) wheel --no-deps --wheel-dir $(WHEELS) .

$(DATA)/README.md: | $(STAMP)
	$(PY) -m anomaly_utils make-synthetic $(DATA)

data: $(DATA)/README.md

ifneq ($(GPU),)
run lab: export KERAS_BACKEND ?= jax
endif
run: $(STAMP) data
	$(PY) -m anomaly_utils run --data-dir $(DATA) $(RUN_ARGS)

# Three pytest processes side by side, so that a 2-core machine stays busy to the end: nbval
# over notebooks/, the tests marked "chain" (they need runs of the notebook chain, which
# tests/conftest.py starts in the background), and every other test. Their reports follow one
# another. The installed-package and JupyterLab tests (a wheel, its notebooks run from a venv;
# the lab in a headless browser), the model tests and the distribution tests go with nbval,
# which would otherwise finish minutes before the others (BALANCE).
NBVAL := --nbval --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=900
BALANCE := tests/test_installed.py tests/test_jupyterlab.py tests/test_models.py \
	tests/test_distribute.py
# Each TensorFlow process gets one thread per pool: three test processes and their background
# runs share two cores, and TensorFlow's spinning thread pools, one per process at the core
# count, would otherwise spend the cores waiting on each other.
test: export TF_NUM_INTRAOP_THREADS := 1
test: export TF_NUM_INTEROP_THREADS := 1
test: export OMP_NUM_THREADS := 1
test: $(STAMP) data
	rm -rf runs/notebooks
	@mkdir -p runs
	@$(PY) -m pytest notebooks $(BALANCE) $(NBVAL) -p no:cacheprovider --durations=10 \
		> runs/nbval.log 2>&1 & nbval=$$!; \
	$(PY) -m pytest tests -m "not chain and not backends" $(BALANCE:%=--ignore=%) -p no:cacheprovider \
		--durations=15 \
		> runs/unit-tests.log 2>&1 & units=$$!; \
	$(PY) -m pytest tests -m chain --durations=20; chain=$$?; \
	wait $$units; units=$$?; wait $$nbval; notebooks=$$?; \
	echo "----- the other tests (log: runs/unit-tests.log) -----"; cat runs/unit-tests.log; \
	echo "----- nbval over notebooks/, and $(BALANCE) (log: runs/nbval.log) -----"; cat runs/nbval.log; \
	test $$chain -eq 0 && test $$units -eq 0 && test $$notebooks -eq 0

notebooks: $(STAMP) data
	rm -rf runs/notebooks
	$(PY) -m anomaly_utils refresh-notebooks

figures: $(STAMP)
	$(PY) -m anomaly_utils figures --dest Images

bench: $(STAMP) data
	$(PY) -m benchmarks

# The user's command on every development set (the carpet, ELPV mono and poly, magnetic_tile
# where ../shared/datasets has it): validation and test columns, seconds and peak memory.
ELPV := elpv-dataset==1.0.0.post1
# The tests marked "backends", which make test's ten minutes leave out: the lab on Keras'
# PyTorch backend (tests/test_torch.py; PyTorch joins the venv from requirements-torch.txt)
# and a JAX training killed and resumed. .ci/run runs it after make test.
test-backends: export OMP_NUM_THREADS := 2
test-backends: $(STAMP) data
	$(PIP_INSTALL) -r requirements-torch.txt
	$(PY) -m pytest tests -m backends -p no:cacheprovider --durations=5

bench-quality: $(STAMP) data
	$(PY) -m pip install --quiet $(ELPV)
	$(PY) -m benchmarks.bench_quality $(QUALITY_ARGS)

lab: $(STAMP) data
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
