# The distill-kit image: a pinned base, Python dependencies from a hashed lock, the kit, a non-root user.
#
#   make image                                   the GPU image: CUDA 13 + cuDNN base, CUDA torch (requirements/cuda.lock)
#   make image BASE_IMAGE=distill-kit-base:bookworm TORCH_VARIANT=cpu
#                                                the CPU image CI builds on a local debootstrap base (make base-image)
#
# Build it through `make image`: it passes the kit version, the git commit and the lock's sha256 (checked below),
# and puts the CPU torch wheel (not on PyPI) and this machine's CA bundle into the build context. Works with the
# classic builder (no BuildKit features): Debian's docker.io ships without buildx.

# NVIDIA's CUDA 13.0.3 runtime + cuDNN image on Ubuntu 24.04 (Python 3.12), by digest: the tag can move, the
# digest cannot. torch 2.13.0's PyPI wheels are built for CUDA 13.0 (nvidia-*-cu13 wheels in the lock). The digest
# is the one public Dockerfiles pin for this tag; the machine this was written on reaches no registry, so check it
# once where one is reachable: `docker buildx imagetools inspect nvidia/cuda:13.0.3-cudnn-runtime-ubuntu24.04`.
ARG BASE_IMAGE=nvidia/cuda:13.0.3-cudnn-runtime-ubuntu24.04@sha256:14f6d08d1cd4a96effbfe3101d0b56326f552c199d05e4979ee0bd616df5811b

# ---- python: the base plus a Python interpreter (the CUDA images have none; the local Debian base has one)
FROM ${BASE_IMAGE} AS python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The versions come from the pinned base's own distribution release, whatever it is: they are not pinned here.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# ---- deps: a virtual environment from the lock (rebuilt only when the lock or the base changes). Binary wheels
# only, every file hash-checked; the lock's own `--no-binary` line names the few pure-Python packages with no
# wheel anywhere, built from their hashed sdists with the locked setuptools (installed first, no isolation).
FROM python AS deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG TORCH_VARIANT=cuda
ARG LOCK_SHA256=""
ARG PIP_INDEX_URL=https://pypi.org/simple
WORKDIR /src
COPY requirements/${TORCH_VARIANT}.lock /src/requirements.lock
# docker/wheels: wheels that are not on the index (the CPU torch build); docker/certs: a CA bundle pip must
# trust where a TLS proxy sits in front of the index. Both stay in this stage, out of the final image.
COPY docker/wheels/ /src/wheels/
COPY docker/certs/ /src/certs/
RUN want=$(sed -n 's/^# distill-kit image lock, variant [a-z]*: Python \([0-9.]*\),.*/\1/p' requirements.lock) \
    && have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    && if [ "$want" != "$have" ]; then \
         echo "requirements/${TORCH_VARIANT}.lock is for Python $want; the base image has $have" >&2; exit 1; fi \
    && got=$(sha256sum requirements.lock | cut -d' ' -f1) \
    && if [ -n "$LOCK_SHA256" ] && [ "$LOCK_SHA256" != "$got" ]; then \
         echo "LOCK_SHA256 says $LOCK_SHA256, the lock in the context is $got" >&2; exit 1; fi \
    && if [ -s certs/ca-certificates.crt ]; then export PIP_CERT=/src/certs/ca-certificates.crt; fi \
    && python3 -m venv /opt/venv \
    && awk '/^setuptools==/{p=1} p{print} p && !/\\$/{exit}' requirements.lock > backend.txt \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --require-hashes \
         --only-binary=:all: --index-url "$PIP_INDEX_URL" -r backend.txt \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --require-hashes \
         --only-binary=:all: --index-url "$PIP_INDEX_URL" --find-links /src/wheels --no-build-isolation \
         --use-pep517 -r requirements.lock

# ---- kit: the kit's wheel, built with no network and no build isolation (setuptools came from the lock)
FROM deps AS kit
COPY pyproject.toml README.md /src/kit/
COPY distill_kit/ /src/kit/distill_kit/
RUN /opt/venv/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-index \
      --no-build-isolation --wheel-dir /src/dist /src/kit

# ---- the image
FROM python
ARG TORCH_VARIANT=cuda
COPY --from=deps /opt/venv /opt/venv
COPY --from=deps /src/requirements.lock /opt/distill-kit/requirements.lock
# The run phase never downloads: models and data come from the read-only asset cache mounted at /cache.
ENV PATH=/opt/venv/bin:$PATH \
    DISTILL_KIT_IN_CONTAINER=1 \
    DISTILL_KIT_CACHE=/cache \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
RUN useradd --no-log-init --create-home --uid 10001 --user-group --shell /bin/bash distill \
    && mkdir -p /cache /work/run \
    && chown distill:distill /work/run
COPY --from=kit /src/dist/ /tmp/dist/
COPY docker/build_info.py /tmp/build_info.py
# The kit, then the build record the fingerprint reads (the image holds no git checkout).
ARG GIT_COMMIT=""
ARG GIT_DIRTY=""
ARG BUILD_DATE=""
ARG BASE_IMAGE
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-index /tmp/dist/*.whl \
    && GIT_COMMIT="$GIT_COMMIT" GIT_DIRTY="$GIT_DIRTY" BUILD_DATE="$BUILD_DATE" BASE_IMAGE="$BASE_IMAGE" \
       python /tmp/build_info.py /opt/distill-kit/requirements.lock "requirements/${TORCH_VARIANT}.lock" \
    && rm -rf /tmp/dist /tmp/build_info.py \
    && distill-kit --help >/dev/null
# The image's own user; `distill-kit run --runtime docker` runs it as the caller's UID:GID instead.
USER 10001:10001
WORKDIR /home/distill
CMD ["distill-kit", "--help"]
ARG KIT_VERSION=unknown
ARG LOCK_SHA256=""
ARG SOURCE_URL=https://github.com/distill-kit/distill-kit
LABEL org.opencontainers.image.title="distill-kit" \
      org.opencontainers.image.description="Reproducible energy and quality accounting for LLM knowledge distillation" \
      org.opencontainers.image.version="${KIT_VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.distill-kit.torch-variant="${TORCH_VARIANT}" \
      io.distill-kit.lock="requirements/${TORCH_VARIANT}.lock" \
      io.distill-kit.lock.sha256="${LOCK_SHA256}"
