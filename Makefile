# The two commands that matter on a fresh clone: `make run` and `make test`.
# Both create .venv when missing and install from requirements.lock (the exact tested set);
# the install is skipped when pyproject.toml and requirements.lock have not changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export GIT_PYTHON_REFRESH := quiet

.PHONY: install run run-neuropixels run-two-photon ablation test bench clean-results mlflow-ui experiments optuna-dashboard push pull services services-stop

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "meiscope needs Python 3.11 (allensdk 2.16.2): set PYTHON=python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/dvc config --local core.analytics false 2>/dev/null || true
	touch $(STAMP)

## the whole study on the default data: raw data (synthesized or downloaded), then every DVC stage
run: $(STAMP)
	$(BIN)/meiscope data
	$(BIN)/dvc repro

## the same study on the synthetic Neuropixels session (a DVC experiment: params.yaml is left edited)
run-neuropixels: $(STAMP)
	$(BIN)/meiscope data --set data.recording=neuropixels
	$(BIN)/dvc exp run -S data.recording=neuropixels

## the same study on session B's natural scenes alone, as before the container (a DVC experiment)
run-two-photon: $(STAMP)
	$(BIN)/meiscope data --set data.recording=two_photon
	$(BIN)/dvc exp run -S data.recording=two_photon

## what each stimulus of the container buys: replicates x arms (slow: about 1 h per replicate on 2 cores)
ablation: $(STAMP)
	$(BIN)/meiscope ablation

## the test suite (end-to-end tests included)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## data and models to / from the DVC remote (default: ../meiscope-dvc-store beside the repository)
push: $(STAMP)
	$(BIN)/dvc push

pull: $(STAMP)
	@$(BIN)/dvc pull 2>/dev/null || { echo "dvc pull: the remote in .dvc/config does not hold this commit's data yet: run \`make run\` (it rebuilds everything from params.yaml), or \`make push\` from a clone that has them"; exit 1; }

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

## the MLflow UI on 127.0.0.1; first prints the links that open the training runs (not the GenAI view)
MLFLOW_UI_PORT ?= 5000
mlflow-ui: $(STAMP)
	@$(BIN)/python -m meiscope.tracking --store sqlite:///mlflow.db --port $(MLFLOW_UI_PORT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

## DVC experiments side by side, in a terminal: the params and metrics that differ (code and data hashes left out)
experiments: $(STAMP)
	$(BIN)/dvc exp show --no-pager --only-changed --drop '^(src|data|results|models|metrics|report)(/|$$)'

optuna-dashboard: $(STAMP)
	$(BIN)/optuna-dashboard --storage-class JournalFileStorage .optuna/journal.log

## the team stack on this machine: PostgreSQL + an MLflow tracking server on it (all under .services/;
## passwords in a private file outside the repository). `make services EXPOSE=1` allows a services.host
## that other machines reach (the MLflow server has no authentication).
services: $(STAMP)
	$(BIN)/meiscope services start $(if $(EXPOSE),--expose)

services-stop: $(STAMP)
	$(BIN)/meiscope services stop

## the documentation site (docs/ + mkdocs.yml) into site/; docs-serve previews it on 127.0.0.1
.PHONY: docs docs-serve readme
## the README's result tables, written anew from metrics/ (a test fails while they are stale)
readme: $(STAMP)
	$(BIN)/python docs/hooks/metric_tables.py README.md

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

clean-results:
	rm -rf results metrics models report
