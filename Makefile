# nodeaudit — every target installs what it needs (venv, pip, apt) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian packages the host tests, the linters and the demo use.
APT_PACKAGES := mmdebstrap shellcheck zstd util-linux kmod
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: help install apt-deps test test-unit test-host test-operator test-azure lint crds demo bench image sync-examples e2e-kind clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { echo ">> installing python3-venv"; $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv python3-pip; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,demo]'
	@touch $@

install: $(STAMP) ## create .venv and install nodeaudit with its test and dev dependencies

apt-deps: ## install the Debian packages the host tests need (only the missing ones)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo ">> apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

# azure-mgmt-compute 37.x keeps an extension's type where 38+ no longer does: the azure suite runs its
# compatibility test under this second, small venv as well.
AZ37 := .venv-az37
$(AZ37)/.stamp:
	$(PYTHON) -m venv $(AZ37)
	$(AZ37)/bin/pip install -q 'azure-mgmt-compute==37.*' azure-core==1.41.0 azure-identity==1.27.0 \
	  azure-mgmt-monitor==7.0.0 azure-mgmt-loganalytics==14.0.0 trustme==1.2.1 pytest==9.2.0 aiohttp==3.14.5 \
	  kubernetes==37.0.2 pydantic==2.14.4 prometheus-client==0.26.0 click PyYAML
	@touch $@

test: install apt-deps $(AZ37)/.stamp ## every suite: unit, host (real kernel audit), operator (kmock), azure (local https ARM)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## the pure unit tests only (seconds)
	$(PY) -m pytest -m "not host and not operator and not azure and not slow" $(PYTEST_ARGS)

test-host: install apt-deps ## apply.sh in a real Debian rootfs against the real kernel audit facility
	$(PY) -m pytest -m host $(PYTEST_ARGS)

test-operator: install ## the real operator against a local API server
	$(PY) -m pytest -m operator $(PYTEST_ARGS)

test-azure: install ## the real Azure SDK against a local https ARM endpoint
	$(PY) -m pytest -m azure $(PYTEST_ARGS)

lint: install apt-deps ## ruff on everything, mypy on the pure core, shellcheck on apply.sh
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/mypy
	shellcheck -s sh operator/nodeaudit/host/*.sh
	shellcheck tests/e2e/kind-smoke.sh
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
	docker build -t nodeaudit:$$($(PY) -c 'import nodeaudit; print(nodeaudit.__version__)') .

sync-examples: ## refresh deploy/examples from examples/ (a test checks they are the same)
	cp examples/*.yaml deploy/examples/

e2e-kind: ## smoke test on a kind cluster (needs Docker and kind; cannot run in the dev sandbox)
	./tests/e2e/kind-smoke.sh

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
