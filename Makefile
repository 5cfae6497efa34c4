# distill-kit: the two commands that do everything are `make reproduce` and `make test`.
#   make reproduce [MANIFEST=kd_32b_1b.yaml]   set up, run, bundle (signed), verify; prints the bundle's path
#   make test                                  set up, run the test suite
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

MANIFEST ?= smoke-kd.yaml
RUNS ?= runs
KEY ?= keys/signing
RUNTIME ?= auto
# The CPU build on disk here; on a GPU host: make reproduce TORCH_SPEC=torch (or install torch first).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= run,eval,report,dev
PYTEST_ARGS ?=

# An active virtual environment is used as it is; otherwise .venv is created.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
DK := $(VENV)/bin/distill-kit
STAMP := $(VENV)/.distill-kit-installed

.PHONY: setup reproduce test verify lint image clean help

help:
	@sed -n '2,4p' Makefile

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

reproduce: setup
	name=$$(basename "$(MANIFEST)" .yaml)
	run_dir="$(RUNS)/$$name-$$(date -u +%Y%m%dT%H%M%SZ)"
	bundle="$$run_dir.bundle.tar"
	[ -f "$(KEY).key" ] || $(DK) keygen --out "$(KEY)"
	$(DK) run "$(MANIFEST)" --run-dir "$$run_dir" --runtime "$(RUNTIME)"
	$(DK) bundle "$$run_dir" --out "$$bundle" --key "$(KEY).key"
	$(DK) verify "$$bundle" --trusted-key "$(KEY).pub"
	echo
	echo "bundle: $$bundle"
	echo "verify it anywhere: distill-kit verify $$bundle --trusted-key $(KEY).pub"

test: setup
	status=0
	$(PY) -m pytest $(PYTEST_ARGS) || status=$$?
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
	exit $$status

verify: setup
	$(DK) verify "$(BUNDLE)" $(if $(TRUSTED),--trusted-key $(TRUSTED))

lint: setup
	$(VENV)/bin/ruff check distill_kit tests benchmarks

image:
	@echo "the container image target comes with the container work (issue 8)"; exit 1

clean:
	rm -rf $(RUNS) .pytest_cache
