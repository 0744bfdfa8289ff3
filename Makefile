# The project's verbs. `make run` and `make test` bootstrap .venv on a fresh machine
# (only python3 needed) and re-install when requirements.txt changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
DATA := data/synthetic_carpet
export PYTHONHASHSEED := 0

.PHONY: run test lab data notebooks figures bench lint venv clean-runs

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

$(DATA)/README.md: | $(STAMP)
	$(PY) -m anomaly_utils make-synthetic $(DATA)

data: $(DATA)/README.md

run: $(STAMP) data
	$(PY) -m anomaly_utils run --data-dir $(DATA)

test: $(STAMP) data
	rm -rf runs/notebooks
	$(PY) -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg \
		--nbval-cell-timeout=900 --durations=20

notebooks: $(STAMP) data
	rm -rf runs/notebooks
	$(PY) -m anomaly_utils refresh-notebooks

figures: $(STAMP)
	$(PY) -m anomaly_utils figures --dest Images

bench: $(STAMP) data
	$(PY) -m benchmarks

lab: $(STAMP) data
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

lint: $(STAMP)
	$(VENV)/bin/ruff check .
