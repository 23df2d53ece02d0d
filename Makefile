# imgclf: train, evaluate, serve and retrain an image classifier.  `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export KERAS_BACKEND := jax

# Extra notebook parameters, e.g.  make train PARAMS="-p epochs 5 -p seed 1"
PARAMS ?=

.PHONY: help setup lock data eda train evaluate retrain pipeline run reports lab test test-unit \
        test-notebooks lint format clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c requirements.lock -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the pinned dependencies (quick when nothing changed)

lock: ## re-pin requirements.lock from what .venv holds now
	{ echo "# Pinned versions of every dependency (pip constraints). Regenerate with: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -v '^imgclf'; } > requirements.lock

data: setup ## write the default data set (scikit-learn digits as PNG folders) into data/
	$(PY) -m imgclf.cli data

eda: setup ## run notebooks/01_eda.ipynb -> reports/
	$(PY) -m imgclf.pipeline run eda $(PARAMS)

train: setup ## train a new model (notebooks/02_train.ipynb) and register it in models/
	$(PY) -m imgclf.pipeline run train $(PARAMS)

evaluate: setup ## evaluate the current model on the test split (notebooks/03_evaluate.ipynb)
	$(PY) -m imgclf.pipeline run evaluate $(PARAMS)

retrain: setup ## fine-tune on train + uploads; promote only if not worse (04_retrain.ipynb)
	$(PY) -m imgclf.pipeline run retrain $(PARAMS)

pipeline: data eda train evaluate ## the whole offline pipeline: data, EDA, train, evaluate

run: data ## set up, prepare data, train if there is no model yet, write the reports
	@if [ -z "$$($(PY) -c 'from imgclf import config, registry; print(registry.current_version(config.get_settings().models_dir) or "")')" ]; then \
	  $(MAKE) --no-print-directory eda train evaluate; \
	else echo "a current model exists: skipping training (make train to train anew)"; fi
	@$(PY) -m imgclf.registry list
	@echo "reports: $(CURDIR)/reports/index.html"

reports: setup ## rewrite reports/index.html
	$(PY) -m imgclf.pipeline index

lab: setup ## open JupyterLab on the notebooks (installs it on first use)
	$(PIP) install --quiet -c requirements.lock -e '.[lab]'
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

test: setup ## run every test: unit, integration and the notebooks under nbval
	$(PY) -m pytest

lint: setup ## check formatting and lint with ruff
	$(VENV)/bin/ruff check src tests serve dashboard
	$(VENV)/bin/ruff format --check src tests serve dashboard

format: setup ## format the code with ruff
	$(VENV)/bin/ruff check --fix src tests serve dashboard
	$(VENV)/bin/ruff format src tests serve dashboard

clean: ## remove generated data, models and reports (keeps .venv)
	rm -rf data/train data/test data/uploads models/v* models/current.json reports/*/ reports/index.html
