# pcam: `make help` lists the targets. Every target works from a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PCAM := $(BIN)/pcam
# The real PCam sample lives outside the repo; point PCAM_SHARED elsewhere if needed.
export PCAM_SHARED ?= $(abspath ../shared)
CONFIG ?= configs/demo.yaml
OUT ?= runs/demo
# One setting names the image everywhere: compile, images, push, kind-load.
REGISTRY ?= localhost/pcam
GIT_SHA := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)
IMAGE_TAG ?= $(GIT_SHA)
export PCAM_IMAGE ?= $(REGISTRY)/pcam-gpu:$(IMAGE_TAG)
export PCAM_CPU_IMAGE ?= $(REGISTRY)/pcam-cpu:$(IMAGE_TAG)
KFP_HOST ?= http://localhost:8080
EXPERIMENT ?= pcam
RUN_NAME ?= pcam-$(shell date +%Y%m%d-%H%M%S)
CRON ?= 0 0 3 * * 0
COMPILED := pipelines/compiled/pcam_training.yaml

.PHONY: help setup demo run test test-fast lint compile submit schedule images push image-check kind-up kind-test bench bench-real clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/pcam: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

setup: $(BIN)/pcam ## Build .venv from nothing (pinned: requirements.lock)

demo: setup ## Run the whole pipeline locally (kfp.local) on configs/demo.yaml; prints the report path
	$(BIN)/python -m pipelines.run_local --config $(CONFIG) --out $(OUT)

run: setup ## Run the study in-process without kfp: make run CONFIG=configs/demo.yaml OUT=runs/study
	$(PCAM) run --config $(CONFIG) --out $(OUT)

test: setup ## Run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q tests

test-fast: setup ## Run the unit tests only
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

lint: setup ## ruff + shellcheck
	$(BIN)/ruff check src tests components pipelines bench
	$(BIN)/shellcheck scripts/*.sh .ci/run bench/*.sh

compile: setup ## Compile the pipeline to pipelines/compiled/pcam_training.yaml
	$(BIN)/python -m pipelines.pcam_training --image $(PCAM_IMAGE) --output $(COMPILED)

submit: compile ## Submit one run: make submit KFP_HOST=... [EXPERIMENT=pcam RUN_NAME=... PARAMS='k=v ...']
	$(BIN)/python -m pipelines.submit run --host $(KFP_HOST) --experiment $(EXPERIMENT) --run-name $(RUN_NAME) --package $(COMPILED) $(foreach p,$(PARAMS),--param $(p))

schedule: compile ## Create a recurring retraining run: make schedule KFP_HOST=... [CRON='0 0 3 * * 0']
	$(BIN)/python -m pipelines.submit schedule --host $(KFP_HOST) --experiment $(EXPERIMENT) --cron '$(CRON)' --package $(COMPILED) $(foreach p,$(PARAMS),--param $(p))

images: ## Build the cpu and gpu images (docker or podman), tagged with the git SHA
	scripts/images.sh build

push: ## Push the images: make push REGISTRY=ghcr.io/you
	scripts/images.sh push

image-check: setup ## Really build the CPU image offline here (debootstrap + podman) and run pcam inside it
	scripts/image-check.sh

kind-up: ## Create a kind cluster with KFP standalone and load the images (needs Docker)
	scripts/kind-up.sh

kind-test: setup ## Run the demo pipeline on the kind cluster (needs Docker)
	scripts/kind-test.sh

bench: setup ## Run the benchmarks; prints `name value unit goal` lines
	$(BIN)/python -m bench.run_all

bench-real: setup ## Real-data figure through the product path: configs/sample.yaml and the study recipe, AUC on pcam-sample/valid
	$(BIN)/python -m bench.real_cnn --out bench/out/real-sample

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf runs build dist bench/out pipelines/compiled/*.yaml
