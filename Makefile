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
export PYTHONHASHSEED := 0

.PHONY: run test lab data notebooks figures bench lint venv clean-runs

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

# nbval (notebooks/) runs in a second pytest process beside the tests: each keeps about one
# core busy, and together they fill a 2-core machine. Its report follows the tests' report.
NBVAL := --nbval --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=900
test: $(STAMP) data
	rm -rf runs/notebooks
	@mkdir -p runs
	@$(PY) -m pytest notebooks $(NBVAL) -p no:cacheprovider --durations=10 \
		> runs/nbval.log 2>&1 & nbval=$$!; \
	$(PY) -m pytest tests --durations=30; tests=$$?; \
	wait $$nbval; notebooks=$$?; \
	echo "----- nbval over notebooks/ (log: runs/nbval.log) -----"; cat runs/nbval.log; \
	test $$tests -eq 0 && test $$notebooks -eq 0

notebooks: $(STAMP) data
	rm -rf runs/notebooks
	$(PY) -m anomaly_utils refresh-notebooks

figures: $(STAMP)
	$(PY) -m anomaly_utils figures --dest Images

bench: $(STAMP) data
	$(PY) -m benchmarks

lab: $(STAMP) data
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
