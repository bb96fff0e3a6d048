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
# GPU node pool of train/finetune/evaluate (a compile option): GPU=nvidia-tesla-a100 sets the
# accelerator label's value; or GPU_LABEL=key=value and GPU_TAINT=key=value:Effect.
GPU ?=
GPU_LABEL ?=
GPU_TAINT ?=
NAMESPACE ?= kubeflow
INFERENCE_COMPILED := pipelines/compiled/pcam_inference.yaml
# Which compiled pipeline `make submit` sends: training (default) or inference.
PIPELINE ?= training
SUBMIT_PACKAGE = $(if $(filter inference,$(PIPELINE)),$(INFERENCE_COMPILED),$(COMPILED))

.PHONY: help setup demo demo-container run test test-fast test-gcs-pipeline lint compile preflight submit schedule images push image-check kind-up kind-test bench bench-real bench-serve serve clean

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

demo-container: setup ## make demo with every step in the CPU image of image-check (kfp.local DockerRunner, podman)
	CONFIG=$(CONFIG) OUT=runs/demo-container PYTHON=$(BIN)/python scripts/demo-container.sh

run: setup ## Run the study in-process without kfp: make run CONFIG=configs/demo.yaml OUT=runs/study
	$(PCAM) run --config $(CONFIG) --out $(OUT)

test: setup ## Run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q tests

test-fast: setup ## Unit tests and in-process component bodies, without the slow ones (~3 min)
	$(BIN)/python -m pytest -q tests/unit tests/components/test_python_func.py tests/components/test_report_component.py -m "not slow"

test-gcs-pipeline: setup ## Only the whole kfp.local pipeline with source, checkpoints and champion on gs:// (fake-gcs-server; 75 s; part of make test)
	$(BIN)/python -m pytest -q tests/storage/test_gcs_pipeline.py

LINT_PATHS = src tests components pipelines bench scripts
lint: setup ## ruff format check, ruff (with Google docstrings), mypy on src/pcam, shellcheck
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/shellcheck scripts/*.sh .ci/run bench/*.sh

GPU_FLAGS = $(if $(GPU),--gpu $(GPU)) $(if $(GPU_LABEL),--gpu-label $(GPU_LABEL)) $(if $(GPU_TAINT),--gpu-taint $(GPU_TAINT))
# PYTHONHASHSEED=0: kfp writes the grid default's keys in protobuf map order, which follows
# Python's string hashing; a fixed seed makes the same sources compile to the same bytes.
compile: setup ## Compile both pipelines to pipelines/compiled/ [GPU=nvidia-l4 | GPU_LABEL=k=v GPU_TAINT=k=v:Effect]
	PYTHONHASHSEED=0 $(BIN)/python -m pipelines.pcam_training --image $(PCAM_IMAGE) --output $(COMPILED) $(GPU_FLAGS)
	PYTHONHASHSEED=0 $(BIN)/python -m pipelines.pcam_inference --image $(PCAM_IMAGE) --output $(INFERENCE_COMPILED) $(GPU_FLAGS)

preflight: compile ## Check the cluster before a submit: make preflight KFP_HOST=... [NAMESPACE=kubeflow]
	$(PCAM) doctor --pipeline $(COMPILED) --namespace $(NAMESPACE) --kfp-host $(KFP_HOST)

submit: compile ## Submit one run: make submit KFP_HOST=... [PIPELINE=inference EXPERIMENT=pcam RUN_NAME=... PARAMS='k=v ...']
	$(BIN)/python -m pipelines.submit run --host $(KFP_HOST) --experiment $(EXPERIMENT) --run-name $(RUN_NAME) --package $(SUBMIT_PACKAGE) $(foreach p,$(PARAMS),--param $(p))

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

serve: setup ## Serve a champion locally (KServe v1 + v2): make serve MODEL=runs/demo/champion [PORT=8080]
	$(PCAM) serve --model $(MODEL) --host 127.0.0.1 --port $(or $(PORT),8080)

bench-serve: setup ## Serving latency/throughput vs in-process, then steady load (STEADY=300 seconds)
	$(BIN)/python -m bench.serve_bench --steady-seconds $(or $(STEADY),300)

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf runs build dist bench/out pipelines/compiled/*.yaml
