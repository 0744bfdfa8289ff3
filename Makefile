# The project's verbs. `make run` and `make test` bootstrap .venv on a fresh machine
# (only python3 needed) and re-install when requirements.txt changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# TensorFlow's CUDA build where nvidia-smi lists a GPU, the CPU build elsewhere.
REQUIREMENTS := $(if $(shell nvidia-smi -L 2>/dev/null | grep -i gpu),requirements-gpu.txt,requirements.txt)
REQ_HASH := $(shell sha256sum $(REQUIREMENTS) pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
DATA := data/synthetic_carpet
# Extra options: `make run RUN_ARGS="-p epochs 1"`, `make lab LAB_ARGS="--port 8890"`.
RUN_ARGS ?=
LAB_ARGS ?=
QUALITY_ARGS ?=
export PYTHONHASHSEED := 0

.PHONY: run test lab data notebooks figures bench bench-quality lint venv clean-runs

venv: $(STAMP)

$(STAMP): $(REQUIREMENTS) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQUIREMENTS)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

$(DATA)/README.md: | $(STAMP)
	$(PY) -m anomaly_utils make-synthetic $(DATA)

data: $(DATA)/README.md

run: $(STAMP) data
	$(PY) -m anomaly_utils run --data-dir $(DATA) $(RUN_ARGS)

# Three pytest processes side by side, so that a 2-core machine stays busy to the end: nbval
# over notebooks/, the tests marked "chain" (they need runs of the notebook chain, which
# tests/conftest.py starts in the background), and every other test. Their reports follow one
# another. The installed-package and JupyterLab tests (a wheel, its notebooks run from a venv;
# the lab in a headless browser) go with nbval, which would otherwise finish two minutes
# before the others (BALANCE).
NBVAL := --nbval --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=900
BALANCE := tests/test_installed.py tests/test_jupyterlab.py
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
	$(PY) -m pytest tests -m "not chain" $(BALANCE:%=--ignore=%) -p no:cacheprovider \
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
bench-quality: $(STAMP) data
	$(PY) -m pip install --quiet $(ELPV)
	$(PY) -m benchmarks.bench_quality $(QUALITY_ARGS)

lab: $(STAMP) data
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
