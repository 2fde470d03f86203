# syntax=docker/dockerfile:1
# One image, two roles:
#   docker run IMAGE                          -> the API (uba-api, port 8000)
#   docker run IMAGE uba-batch score --date D -> a batch job (any uba-batch command)
# There is no ENTRYPOINT on purpose: the command line *is* the role, so Kubernetes
# `command:`/`args:` and `docker run IMAGE CMD...` override it the same way.
# Build: docker build -t uba:0.1.0 .      Deployment guide: docs/deployment.md

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or
# constraints.txt changes, not on every source edit. The list is read from pyproject.toml
# itself and the versions are constraints.txt's, so the image takes exactly what
# `make install` installs.
COPY pyproject.toml constraints.txt ./
RUN pip install --upgrade pip \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt

# Then the project itself, the way the Makefile installs it (pip install of "."),
# but as a regular (non-editable) install without the dev extras; its dependencies
# are already in place.
COPY README.md ./
COPY uba ./uba
COPY jobs ./jobs
RUN pip install --no-deps .

# ---------------------------------------------------------------- final stage
# A fresh slim base: no compilers, no pip cache, no build tree; only the venv.
FROM ${PYTHON_IMAGE} AS runtime
ARG UBA_UID=10001
LABEL org.opencontainers.image.title="uba" \
      org.opencontainers.image.description="User behaviour anomaly detection: batch jobs (uba-batch) and API (uba-api)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid ${UBA_UID} uba \
 && useradd --system --uid ${UBA_UID} --gid ${UBA_UID} --home-dir /home/uba --create-home --shell /usr/sbin/nologin uba \
 && mkdir -p /var/lib/uba/data /var/lib/uba/models /var/lib/uba/output \
 && chown -R ${UBA_UID}:${UBA_UID} /var/lib/uba
COPY --from=build /opt/venv /opt/venv
# numba's cache of the compiled forest kernel (uba/model/kernel.py): a path the image's
# user can write (numba uses a cache directory only if it can write to it), filled here
# by one tiny score so a container's first score loads machine code instead of
# compiling it (docs/batch-scoring.md). Kubernetes mounts an emptyDir at this path
# (read-only root): there the first scoring process of a pod compiles and caches.
ENV NUMBA_CACHE_DIR=/var/cache/uba/numba
RUN mkdir -p ${NUMBA_CACHE_DIR} \
 && PYTHONDONTWRITEBYTECODE=1 /opt/venv/bin/python -c "import uba.model.kernel as kernel; kernel.warm_up()" \
 && chown -R ${UBA_UID}:${UBA_UID} /var/cache/uba
WORKDIR /app
# configs/default.yaml is read relative to the working directory (uba.settings).
COPY configs ./configs

# Settings come from env (see configs/default.yaml for every key): paths point at the
# one volume /var/lib/uba; the API listens on all interfaces inside the container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/uba \
    MPLCONFIGDIR=/tmp/matplotlib \
    RAY_USAGE_STATS_ENABLED=0 \
    UBA_DATA_DIR=/var/lib/uba/data \
    UBA_MODEL_DIR=/var/lib/uba/models \
    UBA_OUTPUT_DIR=/var/lib/uba/output \
    UBA_API__HOST=0.0.0.0 \
    UBA_API__PORT=8000

USER ${UBA_UID}:${UBA_UID}
EXPOSE 8000
# curl is not in the slim image; the venv's Python does the probe. Liveness only
# (/health): readiness (/ready) is for load balancers and Kubernetes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('UBA_API__PORT', '8000'), timeout=4)"]
CMD ["uba-api"]
