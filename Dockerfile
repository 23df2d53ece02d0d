# imgclf: one image for the API replicas, the job worker and the dashboard.
#   make image                      (docker or podman: CONTAINER_ENGINE; OFFLINE=1 pulls nothing)
#   make stack-up REPLICAS=2        (compose.yaml; docs/deployment.md)
# PYTHON_IMAGE is any Debian-like image with Python >= 3.11.5 and venv: the official
# python:3.13-slim-trixie by default, or imgclf-base:trixie made from the Debian mirror by
# `make image OFFLINE=1` (debootstrap, imported: no image registry involved).
# pip reaches its index with the build's network; a custom CA and a private index come in as
# the build secrets `pip_cert` and `pip_index_url` (never an argument or a layer:
# `--secret id=pip_cert,src=/path/ca.crt`; make image passes PIP_CERT and PIP_INDEX_URL).
ARG PYTHON_IMAGE=python:3.13-slim-trixie

# 1. the dependencies: pinned by the lock, only those of pyproject's [project] (no test or lab
# tools); rebuilt only when requirements.lock or pyproject.toml changes
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY requirements.lock pyproject.toml /tmp/build/
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_index_url \
    set -e; if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    if [ -s /run/secrets/pip_index_url ]; then export PIP_INDEX_URL="$(cat /run/secrets/pip_index_url)"; fi; \
    python3 -m venv /opt/venv; \
    python3 -c "import tomllib; print(*tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/build/dependencies.txt; \
    /opt/venv/bin/pip install --no-compile -c /tmp/build/requirements.lock -r /tmp/build/dependencies.txt; \
    # what no deployment runs: pip itself, test suites and C headers inside packages
    find /opt/venv -depth \( -name tests -o -name __pycache__ \) -path '*/site-packages/*' \
      -not -path '*/numpy/*' -not -path '*/pandas/*' -type d -exec rm -rf {} +; \
    find /opt/venv -name '*.pyx' -delete; \
    /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib >/dev/null || true

# 2. the service: the venv above, then the project's source (the layer a code change rebuilds)
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 KERAS_BACKEND=jax \
    PATH=/opt/venv/bin:$PATH PYTHONPATH=/app/src NOTEBOOKS_DIR=/app/notebooks \
    DATA_DIR=/srv/imgclf/shared/data MODELS_DIR=/srv/imgclf/shared/models \
    REPORTS_DIR=/srv/imgclf/shared/reports HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib \
    HOST=0.0.0.0 PORT=8000
RUN (useradd --uid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin imgclf \
     || echo 'imgclf:x:10001:10001::/tmp:/usr/sbin/nologin' >> /etc/passwd) \
    && mkdir -p /srv/imgclf/shared \
    && chown -R 10001:10001 /srv/imgclf
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY deploy/entrypoint.sh /usr/local/bin/imgclf-entrypoint
COPY deploy/healthcheck.py /usr/local/bin/imgclf-healthcheck
COPY notebooks ./notebooks
COPY src ./src
# the package runs from /app/src (no wheel to build); `imgclf` is its command line; compiled
# here because the root file system is read-only at run time
RUN printf '#!/bin/sh\nexec python -m imgclf.cli "$@"\n' > /opt/venv/bin/imgclf \
    && chmod 755 /opt/venv/bin/imgclf \
    && sed -i '1s|.*|#!/opt/venv/bin/python|' /usr/local/bin/imgclf-healthcheck \
    && python -m compileall -q /app/src >/dev/null
USER 10001:10001
# models, data and reports: mount one volume at /srv/imgclf/shared (compose.yaml, deploy/k8s)
EXPOSE 8000 5006
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["imgclf-healthcheck", "--ready"]
ENTRYPOINT ["imgclf-entrypoint"]
CMD ["api"]
