# imgclf: train, evaluate, serve and retrain an image classifier.  `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# make setup ACCEL=cuda: the CUDA 12 build of JAX (an NVIDIA GPU); the default is the CPU
ACCEL ?= cpu
STAMP := $(VENV)/.installed-$(ACCEL)
export KERAS_BACKEND := jax

# Extra notebook parameters, e.g.  make train PARAMS="-p epochs 5 -p seed 1"
PARAMS ?=

# API and dashboard: make serve PORT=8080 WORKERS=2
PORT ?= 8000
WORKERS ?= 2
DASHBOARD_PORT ?= 5006
export PORT WORKERS DASHBOARD_PORT

.PHONY: help setup lock lock-cuda bench-request bench-backbone bench-gate bench-retrain bench-stats bench-trust bench-quality bench-quality-full bench-head bench-data soak bench-train data data-fashion eda train evaluate retrain pipeline run model db serve worker \
        cluster dashboard token bench loadtest reports lab test test-fast lint format clean docs \
        image stack-up stack-down stack-status test-containers loadtest-containers

# make run / make serve start one job worker beside the API; WORKER=0 leaves it out
WORKER ?= 1
export WORKER
# make cluster REPLICAS=4 ; make loadtest LOAD_REPLICAS=1,2,4 USERS=16 DURATION=30s
REPLICAS ?= 2
export REPLICAS USERS DURATION LOAD_REPLICAS

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock requirements-cuda.lock
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
ifeq ($(ACCEL),cuda)
	$(PIP) install --quiet -c requirements.lock -c requirements-cuda.lock -e '.[test,cuda]'
else
	$(PIP) install --quiet -c requirements.lock -e '.[test]'
endif
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the pinned dependencies (quick when nothing changed)

lock-cuda: ## re-pin requirements-cuda.lock: the CUDA build of JAX matching requirements.lock
	$(PIP) install --quiet --dry-run --ignore-installed --report .cuda-report.json \
	  -c requirements.lock 'jax[cuda12]'
	$(PY) -c "import json; r = json.load(open('.cuda-report.json')); \
	  pins = sorted(f\"{i['metadata']['name']}=={i['metadata']['version']}\" for i in r['install'] \
	  if i['metadata']['name'].startswith(('jax-cuda', 'nvidia-'))); \
	  print('# Pinned CUDA 12 build of JAX (pip constraints on top of requirements.lock). ' \
	  'Regenerate with: make lock-cuda'); print(*pins, sep=chr(10))" > requirements-cuda.lock
	@rm -f .cuda-report.json

lock: ## re-pin requirements.lock from what .venv holds now
	{ echo "# Pinned versions of every dependency (pip constraints). Regenerate with: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -v '^imgclf'; } > requirements.lock

data: setup ## write the default data set (scikit-learn digits as PNG folders) into data/
	$(PY) -m imgclf.cli data

data-fashion: setup ## Fashion-MNIST as PNG folders into DATA_DIR (set it: data/ has the digits)
	$(PY) -m imgclf.cli data --source fashion_mnist

eda: setup ## run notebooks/01_eda.ipynb -> reports/
	$(PY) -m imgclf.cli run eda $(PARAMS)

train: setup db ## train a new model (notebooks/02_train.ipynb) and register it in models/
	$(PY) -m imgclf.cli run train $(PARAMS)

evaluate: setup ## evaluate the current model on the test split (notebooks/03_evaluate.ipynb)
	$(PY) -m imgclf.cli run evaluate $(PARAMS)

retrain: setup db ## fine-tune on train + uploads; promote only if not worse (04_retrain.ipynb)
	$(PY) -m imgclf.cli run retrain $(PARAMS)

pipeline: data eda train evaluate ## the whole offline pipeline: data, EDA, train, evaluate

model: data db ## prepare data and train (EDA, train, evaluate) unless a current model exists
	@if [ -z "$$($(PY) -c 'from imgclf import config; from imgclf.model import registry; print(registry.current_version(config.get_settings().models_dir) or "")')" ]; then \
	  $(MAKE) --no-print-directory eda train evaluate; \
	else echo "a current model exists: skipping training (make train to train anew)"; fi
	@$(PY) -m imgclf.cli models list
	@echo "reports: $(CURDIR)/reports/index.html"

db: setup ## create or migrate the database (DATABASE_URL) to the newest schema
	$(PY) -m imgclf.cli db upgrade

run: model db ## everything: set up, data, train if no model yet, then API + worker + dashboard
	$(PY) -m devkit.launch

serve: model db ## the API under gunicorn (PORT, WORKERS) and a job worker (WORKER=0: none)
	$(PY) -m devkit.launch --no-dashboard

worker: db ## a job worker alone: claims queued retrain jobs from DATABASE_URL and runs them
	$(PY) -m imgclf.cli worker

dashboard: setup ## start the dashboard alone (expects the API at IMGCLF_API_URL)
	$(PY) -m dashboard

token: setup ## print the admin token (created in .env on first use)
	@$(PY) -c 'from devkit.launch import ensure_token; print(ensure_token())'

bench: model db ## /predict over HTTP (hey): this API against a plain server; then the backbone section
	@command -v hey >/dev/null || { echo "make bench needs hey: apt-get install hey"; exit 1; }
	$(PY) -m devkit.bench
	$(PY) -m devkit.bench_backbone

bench-request: model ## /predict piece by piece, then over HTTP against /health and a plain server
	@command -v hey >/dev/null || { echo "make bench-request needs hey: apt-get install hey"; exit 1; }
	$(PY) -m devkit.bench_request $(BENCH_REQUEST_ARGS)

bench-backbone: setup ## EfficientNet-Lite0 served by JAX and OpenVINO, with and without micro-batching
	@command -v hey >/dev/null || { echo "make bench needs hey: apt-get install hey"; exit 1; }
	$(PY) -m devkit.bench_backbone

bench-gate: setup ## simulate the promotion gate: false rejections and power by test-set size
	$(PY) -m devkit.bench_gate

bench-retrain: setup ## the retrain decision's time (one pass per model against the old passes) and the idle worker's memory after a job
	$(PY) -m devkit.bench_retrain

bench-quality: setup ## accuracy and ECE over 3 seeds: digits, Fashion-MNIST with 1,000 labels, few RGB photos; CNN, EfficientNet-Lite0 and auto
	$(PY) -m devkit.bench_quality

bench-quality-full: setup ## the CNN on all of Fashion-MNIST, 3 seeds at once (about 110 minutes on 2 cores)
	BENCH_QUALITY_ONLY=fashion-cnn BENCH_QUALITY_JOBS=$${BENCH_QUALITY_JOBS:-3} $(PY) -m devkit.bench_quality

bench-head: setup ## head-only training on EfficientNet-Lite0: its features computed once against at every read (about 10 minutes)
	$(PY) -m devkit.bench_head

bench-data: setup ## the data audit: planted leaks and near-duplicates, label noise, drift on features, review queue, cost (30-40 min on 2 shared cores; BENCH_DATA_PARTS=neardup,labels,drift,active,cost for some)
	$(PY) -m devkit.bench_data

bench-trust: model ## what the unknown answer and ?explain=true cost a prediction, in process
	$(PY) -m devkit.bench_trust $(BENCH_TRUST_ARGS)

bench-stats: setup ## /stats' cost with 1,000 to 1,000,000 logged predictions (SQLite)
	$(PY) -m devkit.bench_stats

soak: model ## SOAK_MINUTES (30) of mixed traffic: memory, files, threads, database over time
	$(PY) -m devkit.soak

bench-train: setup ## decode and training speed, peak memory (BENCH_IMAGES, BENCH_SIZE, BENCH_DATA)
	$(PY) -m devkit.bench_train

cluster: model ## PostgreSQL + REPLICAS API replicas + a worker + nginx on this machine (Ctrl-C)
	@command -v nginx >/dev/null || { echo "make cluster needs nginx: apt-get install nginx"; exit 1; }
	$(PY) -m devkit.cluster

loadtest: model ## locust through nginx against 1, 2 and 4 replicas -> reports/loadtest-*/
	@command -v nginx >/dev/null || { echo "make loadtest needs nginx: apt-get install nginx"; exit 1; }
	$(PIP) install --quiet -c requirements.lock -e '.[load]'
	$(PY) -m devkit.loadtest

# The stack in containers (compose.yaml): make stack-up REPLICAS=2 LB_PORT=8080 OFFLINE=1
# CONTAINER_ENGINE=docker|podman (default: the first that works); OFFLINE=1: no image registry
export CONTAINER_ENGINE OFFLINE LB_PORT

image: setup ## build imgclf:<version> (and, OFFLINE=1, its Debian base and stand-in images)
	$(PY) -m devkit.stack image

stack-up: setup ## compose.yaml's stack in containers, healthy (REPLICAS, LB_PORT, OFFLINE)
	$(PY) -m devkit.stack up

stack-down: setup ## stop the container stack; its volumes (model, data, database) are kept
	$(PY) -m devkit.stack down

stack-status: setup ## the container stack's containers and their state
	$(PY) -m devkit.stack status

test-containers: setup ## the container tier: the stack checked like the host (OFFLINE=1 default)
	IMGCLF_TEST_CONTAINERS=1 OFFLINE=$${OFFLINE:-1} $(PY) -m pytest -m containers tests/test_containers.py -v -s

loadtest-containers: data ## locust through nginx against 1, 2 and 4 API containers
	$(PIP) install --quiet -c requirements.lock -e '.[load]'
	$(PY) -m devkit.loadtest_containers

reports: setup ## rewrite reports/index.html
	$(PY) -m imgclf.cli reports

lab: setup ## open JupyterLab on the notebooks (installs it on first use)
	$(PIP) install --quiet -c requirements.lock -e '.[lab]'
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

test: setup ## run every test: unit, integration and the notebooks under nbval
	$(PY) -m pytest

test-fast: setup ## the fast loop: no process-starting or training test (the session model is kept)
	$(PY) -m pytest -m "not slow and not training" -q

lint: setup ## check formatting and lint with ruff
	$(VENV)/bin/ruff check src tests locustfile.py
	$(VENV)/bin/ruff format --check src tests locustfile.py

docs: setup ## the docs site into site/: the configuration page regenerated, mkdocs build --strict
	$(PY) -m imgclf.config.reference
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "site/index.html (mkdocs serve for a live preview)"

format: setup ## format the code with ruff
	$(VENV)/bin/ruff check --fix src tests locustfile.py
	$(VENV)/bin/ruff format src tests locustfile.py

clean: ## remove generated data, models and reports (keeps .venv)
	rm -rf data/train data/test data/uploads models/v* models/current.json reports/*/ reports/index.html
