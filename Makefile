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
EXTRAS ?= run,eval,report,leaderboard,dev
PYTEST_ARGS ?=
# Test processes (pytest-xdist; 0 runs them in this one). Most tests wait on subprocesses, servers and containers,
# so two processes on CI's two cores overlap one test's waiting with another's work; a file stays on one process.
PYTEST_WORKERS ?= 2

# An active virtual environment is used as it is; otherwise .venv is created.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
DK := $(VENV)/bin/distill-kit
STAMP := $(VENV)/.distill-kit-installed

.PHONY: setup reproduce test verify lint image base-image apptainer lock clean help

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
	[ -f "$(KEY).key" ] || { mkdir -p "$$(dirname "$(KEY)")" && $(DK) keygen --out "$(KEY)"; }
	$(DK) run "$(MANIFEST)" --run-dir "$$run_dir" --runtime "$(RUNTIME)"
	$(DK) bundle "$$run_dir" --out "$$bundle" --key "$(KEY).key"
	$(DK) verify "$$bundle" --trusted-key "$(KEY).pub"
	echo
	echo "bundle: $$bundle"
	echo "verify it anywhere: distill-kit verify $$bundle --trusted-key $(KEY).pub"

test: setup
	status=0
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || status=$$?
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
	exit $$status

verify: setup
	$(DK) verify "$(BUNDLE)" $(if $(TRUSTED),--trusted-key $(TRUSTED))

lint: setup
	$(VENV)/bin/ruff check distill_kit tests benchmarks
	$(VENV)/bin/lint-imports --no-cache  # the layers of docs/architecture.md (.importlinter)
	$(VENV)/bin/mypy  # the packages [tool.mypy] names in pyproject.toml
	$(VENV)/bin/hadolint Dockerfile
	$(PY) docker/lock.py check

# The container image (Dockerfile; README "Container"). The default is the GPU image (CUDA base by digest, CUDA
# torch); without a registry: make base-image && make image BASE_IMAGE=distill-kit-base:bookworm (CPU torch).
IMAGE ?= distill-kit
BASE_IMAGE ?=
BASE_NAME ?= distill-kit-base:bookworm
TORCH_VARIANT ?= $(if $(findstring distill-kit-base,$(BASE_IMAGE)),cpu,cuda)
PY_ANY = $(if $(wildcard $(PY)),$(PY),python3)

image:
	version=$$($(PY_ANY) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
	lock=requirements/$(TORCH_VARIANT).lock
	[ -f "$$lock" ] || { echo "no $$lock (TORCH_VARIANT is cpu or cuda)"; exit 2; }
	[ "$(TORCH_VARIANT)" != cpu ] || $(PY_ANY) docker/lock.py wheels cpu
	if [ -n "$${PIP_CERT:-}" ] && [ -f "$$PIP_CERT" ]; then cp "$$PIP_CERT" docker/certs/ca-certificates.crt; fi
	commit=$$(git rev-parse HEAD 2>/dev/null || true)
	dirty=$$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true || echo false)
	created=$$( [ "$$dirty" = false ] && git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
	docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0  # Debian's docker.io has no buildx
	start=$$(date +%s)
	docker build --tag "$(IMAGE):$$version" --tag "$(IMAGE):latest" \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) --build-arg TORCH_VARIANT=$(TORCH_VARIANT) \
	  --build-arg KIT_VERSION="$$version" --build-arg LOCK_SHA256="$$(sha256sum "$$lock" | cut -d' ' -f1)" \
	  --build-arg GIT_COMMIT="$$commit" --build-arg GIT_DIRTY="$$dirty" --build-arg BUILD_DATE="$$created" .
	echo "image $(IMAGE):$$version ($(TORCH_VARIANT) torch) built in $$(( $$(date +%s) - start )) s:" \
	  "$$(docker image inspect -f '{{.Id}}, {{.Size}} bytes' "$(IMAGE):$$version")"

# A local Debian bookworm base (debootstrap + docker import) for machines that reach no registry.
base-image:
	docker/make-base.sh "$(BASE_NAME)"

# The Apptainer recipe (apptainer/distill-kit.def) from the same lock, for clusters without Docker.
apptainer:
	$(PY_ANY) apptainer/generate.py $(if $(filter cpu,$(TORCH_VARIANT)),--variant cpu)

# Recompile the image's locks (requirements/*.lock) after changing dependencies in pyproject.toml (needs PyPI).
lock: setup
	[ -x "$(VENV)/bin/uv" ] || $(PY) -m pip install --quiet uv
	$(PY) docker/lock.py compile

clean:
	rm -rf $(RUNS) .pytest_cache
