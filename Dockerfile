# syntax=docker/dockerfile:1.7
#
# cortex-bridge container image.
#
#   docker build -t REGISTRY/cortex-bridge:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v cortex-bridge-queue:/var/lib/cortex-bridge \
#     -e BRIDGE_CORTEX__TOKEN_FILE=/run/secrets/cortex-token ... REGISTRY/cortex-bridge:0.1.0
#
# tests/deploy/test_dockerfile.py checks the invariants below without a Docker engine (user,
# entrypoint, ports, volume) and runs the same pip commands in a fresh virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim-trixie

# -- build: every wheel the bridge needs ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

# A compiler only here, for a dependency that ships no wheel for the target architecture; the
# final stage installs from /wheels and never sees it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build reads, so an edit to tests or docs does not invalidate this layer.
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip wheel --wheel-dir /wheels .

# -- runtime ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp

# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
# --no-index: only what the build stage produced, nothing resolved again at this point.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels cortex-bridge

# A numeric user, so Kubernetes can verify runAsNonRoot without resolving names. The queue
# directory is the only place the process writes (besides TMPDIR, which is a tmpfs/emptyDir in
# production), which is what makes a read-only root filesystem work.
RUN groupadd --system --gid 10001 cortex-bridge \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cortex-bridge --no-create-home \
      --shell /usr/sbin/nologin cortex-bridge \
 && mkdir -p /var/lib/cortex-bridge \
 && chown 10001:10001 /var/lib/cortex-bridge \
 && chmod 0750 /var/lib/cortex-bridge

USER 10001:10001
WORKDIR /var/lib/cortex-bridge
VOLUME ["/var/lib/cortex-bridge"]

# 8080: webhooks, POST /v1/records, /healthz, /readyz (http.port); 9090: /metrics (metrics.port).
EXPOSE 8080 9090

# No init process (tini): the bridge is PID 1 itself. It installs its own SIGTERM/SIGINT
# handlers (the drain in bridge/app.py), so the kernel's rule that PID 1 ignores signals it
# has no handler for does not apply, and it starts no child processes, so there are no zombies
# to reap. The exec form keeps a shell out of the way of the signal.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cortex-bridge"]
CMD ["run"]
