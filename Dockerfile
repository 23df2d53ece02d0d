# imgclf: one image for the API replicas, the job worker and the dashboard.
#   docker build -t imgclf .            (or: podman build ...)
#   docker compose up --scale api=4     (see compose.yaml)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 KERAS_BACKEND=jax PATH=/opt/venv/bin:$PATH \
    DATA_DIR=/srv/imgclf/data MODELS_DIR=/srv/imgclf/models REPORTS_DIR=/srv/imgclf/reports \
    HOST=0.0.0.0 PORT=8000

RUN useradd --create-home --uid 10001 imgclf
WORKDIR /app

# dependencies first, in their own layer: pinned, and rebuilt only when the lock changes
# (a virtual environment: works on python:*-slim and on Debian's own python3 alike)
# behind a private index or a TLS-inspecting proxy: --build-arg PIP_INDEX_URL=... PIP_CERT=...
ARG PIP_INDEX_URL
ARG PIP_CERT
COPY requirements.lock ./
RUN python3 -m venv /opt/venv && pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY src ./src
COPY notebooks ./notebooks
RUN pip install --no-deps . \
    && mkdir -p /srv/imgclf/data /srv/imgclf/models /srv/imgclf/reports \
    && chown -R imgclf:imgclf /srv/imgclf

COPY deploy/entrypoint.sh /usr/local/bin/imgclf-entrypoint
COPY deploy/healthcheck.py /usr/local/bin/imgclf-healthcheck
USER imgclf
ENV NOTEBOOKS_DIR=/app/notebooks
VOLUME ["/srv/imgclf/data", "/srv/imgclf/models", "/srv/imgclf/reports"]
EXPOSE 8000 5006
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["imgclf-healthcheck"]
ENTRYPOINT ["imgclf-entrypoint"]
CMD ["api"]
