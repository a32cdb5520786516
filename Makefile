# nodeaudit — every target installs what it needs (venv, pip, apt) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian packages the targets use: mmdebstrap and zstd (the host tests' and fresh-check's roots),
# util-linux (unshare, nsenter, flock, pivot_root), kmod, shellcheck (lint), git (lint-shell lists the
# tracked files; fresh-check clones HEAD). kubectl (tests/cli/test_kubectl.py) comes from Debian's
# kubernetes-client when no kubectl is installed.
APT_PACKAGES := mmdebstrap shellcheck zstd util-linux kmod git
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# Every Python pin lives in constraints.txt; the version in operator/nodeaudit/__init__.py.
CONSTRAINTS := constraints.txt
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' operator/nodeaudit/__init__.py)

.PHONY: help install apt-deps test test-unit test-host test-operator test-faults test-azure lint crds demo bench image sync-examples e2e-kind fresh-check clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { echo ">> installing python3-venv"; $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv python3-pip; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[test,dev,demo]'
	@touch $@

install: $(STAMP) ## create .venv and install nodeaudit with its test and dev dependencies

apt-deps: ## install the Debian packages the host tests need (only the missing ones)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then echo ">> apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

# azure-mgmt-compute 37.x keeps an extension's type where 38+ no longer does: the azure suite runs its
# compatibility test under this second, small venv as well.
AZ37 := .venv-az37
$(AZ37)/.stamp: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(AZ37)
	{ grep -v '^azure-mgmt-compute==' $(CONSTRAINTS); sed -n 's/^#az37: //p' $(CONSTRAINTS); } > $(AZ37)/constraints.txt
	$(AZ37)/bin/pip install -q -c $(AZ37)/constraints.txt -e '.[test]'
	@touch $@

test: install apt-deps $(AZ37)/.stamp ## every suite: unit, host (real kernel audit), operator (kmock), azure (local https ARM)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## the pure unit tests only (seconds)
	$(PY) -m pytest -m "not host and not operator and not azure and not slow" $(PYTEST_ARGS)

test-host: install apt-deps ## apply.sh in a real Debian rootfs against the real kernel audit facility
	$(PY) -m pytest -m host $(PYTEST_ARGS)

test-operator: install ## the real operator against a local API server
	$(PY) -m pytest -m operator $(PYTEST_ARGS)

test-faults: install ## the operator behind the fault-injecting API proxy (NODEAUDIT_FAULT_SEED=N repeats a run)
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

test-azure: install ## the real Azure SDK against a local https ARM endpoint
	$(PY) -m pytest -m azure $(PYTEST_ARGS)

lint: install apt-deps ## ruff (BLE, RUF100 on), mypy, import contracts (.importlinter), shellcheck on every shell file, hadolint
	$(VENV)/bin/ruff check operator tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	tools/lint-shell.sh
	$(VENV)/bin/hadolint Dockerfile

crds: install ## regenerate crds/nodeauditpolicy.yaml and docs/policy.md from the pydantic model
	$(VENV)/bin/nodeaudit crd > crds/nodeauditpolicy.yaml
	@mkdir -p docs && $(VENV)/bin/nodeaudit crd --reference > docs/policy.md
	@echo "wrote crds/nodeauditpolicy.yaml and docs/policy.md"

demo: install ## the real operator against an embedded local API with simulated AKS nodes
	$(VENV)/bin/nodeaudit demo

bench: install apt-deps ## performance figures (validate, host apply, exec cost, operator scale, ARM calls)
	$(PY) -m bench $(BENCH)

image: ## build the container image (operator and node Jobs)
	docker build -t nodeaudit:$(VERSION) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

sync-examples: ## refresh deploy/examples from examples/ (a test checks they are the same)
	cp examples/*.yaml deploy/examples/

fresh-check: apt-deps ## make demo and make test in a fresh Debian 12 root (mmdebstrap, chroot): what a new user sees
	tools/fresh-check.sh

e2e-kind: ## smoke test on a kind cluster (needs Docker and kind; cannot run in the dev sandbox)
	./tests/e2e/kind-smoke.sh

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
