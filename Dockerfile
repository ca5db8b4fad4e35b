# Bourse's image: one image for every process (API, worker, scheduler, PSP
# simulator, migrations), built in stages so that the runtime stage holds only
# the virtual environment and what it needs. Layout and choices:
# docs/decisions/0016-container-image.md. Build it with `make image`.

# Base images are build arguments, so a build can substitute them; production
# builds pin them by digest, e.g. PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The web UI's build stage (Node 20, the version the README asks for).
ARG NODE_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------------------
# Dependencies: uv installs the locked runtime dependencies (no dev group) into
# /opt/bourse/venv, and everything is compiled to byte-code now, never checked
# against sources at run time (--invalidation-mode unchecked-hash): our
# counterpart of OPcache's validate_timestamps=0. Nobody edits code inside a
# running container; we ship a new image.
FROM ${PYTHON_IMAGE} AS deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Only for machines whose outbound TLS is re-signed by a local authority (CI):
# the CA bundle for pip and uv. Declared in this stage only, so they never reach
# the runtime image.
ARG PIP_CERT
ARG SSL_CERT_FILE
ARG UV_VERSION=0.13.9
ENV PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/bourse/venv
# binutils, for strip, in this stage only: the C extensions of some wheels carry
# debug symbols (uvloop's alone: 12 MB) that nothing reads at run time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./
# The dependencies ship as byte-code alone (.pyc where the .py was), which keeps
# the image under its size target; their tracebacks name file, line and function
# but show no source line. Bourse's own code keeps its sources (stage app).
# Extensions repaired by auditwheel (an RPATH to their bundled libraries) are
# left as they are: strip can break what patchelf rewrote.
RUN uv sync --frozen --no-dev --no-install-project --python python3 \
    && site=$(/opt/bourse/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && python3 -m compileall -q -b -j 0 --invalidation-mode unchecked-hash "$site" \
    && find "$site" -name '*.py' -delete \
    && find "$site" -depth -name __pycache__ -type d -exec rm -rf {} + \
    && find "$site" -name '*.so' -not -path '*.libs/*' -exec sh -c \
        'for so; do readelf --dynamic "$so" | grep -q -e RPATH -e RUNPATH || strip --strip-unneeded "$so"; done' \
        sh {} +
# The standard library's byte-code too (the Python base ships none), collected
# apart so that the runtime stage gets the .pyc files and nothing else.
RUN stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))') \
    && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        -x '/(site-packages|dist-packages|test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)/' "$stdlib" \
    && mkdir -p /out/stdlib \
    && find "$stdlib" -path '*/site-packages' -prune -o -path '*/dist-packages' -prune -o -name '*.pyc' -print0 \
        | tar --null -T - -cf - | tar -C /out/stdlib -xf -

# ---------------------------------------------------------------------------
# The web UI: `npm ci` from the lock file, then `npm run build` (Vite, Tailwind,
# with the bundle budgets checked) into src/bourse/webui/dist. Only the built
# files leave this stage: they ship inside Bourse's wheel, so the runtime image
# needs no Node. Changing a Python file does not rebuild it.
FROM ${NODE_IMAGE} AS web
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# As PIP_CERT above: for machines whose outbound TLS is re-signed (CI), this stage only.
ARG NODE_EXTRA_CA_CERTS
ENV npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci
COPY web ./
RUN npm run build

# ---------------------------------------------------------------------------
# Bourse itself, installed from the source tree as a wheel (not editable) on top
# of the dependencies, with the web UI's built files inside it. Its files are
# collected apart, so that changing a Python file rebuilds only this stage and the
# last layer of the image.
FROM deps AS app
COPY README.md LICENSE ./
COPY migrations ./migrations
COPY src ./src
COPY --from=web /src/src/bourse/webui/dist ./src/bourse/webui/dist
RUN uv sync --frozen --no-dev --no-editable --python python3 \
    && site=$(/opt/bourse/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash "$site/bourse" \
    && mkdir -p "/out/venv/${site#/opt/bourse/venv/}" /out/venv/bin \
    && mv "$site/bourse" "$site"/bourse-*.dist-info "/out/venv/${site#/opt/bourse/venv/}/" \
    && mv /opt/bourse/venv/bin/bourse /out/venv/bin/


# ---------------------------------------------------------------------------
# Runtime: the Python base, the virtual environment and byte-code. No compiler,
# no pip, no uv, no Node, no package caches. Runs as uid/gid 1000 and works on a
# read-only root filesystem: only /tmp and a volume on /var/lib/bourse (the
# working directory, where the SQLite default ./var/bourse.db lands) are written.
FROM ${PYTHON_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1
# The base's installers go, with the wheels ensurepip would reinstall them from:
# nothing installs packages at run time.
RUN python3 -m pip uninstall --yes --quiet --disable-pip-version-check --root-user-action=ignore pip setuptools wheel \
    && find / -xdev -name '*.whl' -delete \
    && groupadd --gid 1000 bourse \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin bourse \
    && install -d -o 1000 -g 1000 -m 0750 /var/lib/bourse
COPY --from=deps /out/stdlib/ /
COPY --from=deps --chown=1000:1000 /opt/bourse/venv /opt/bourse/venv
COPY --from=app --chown=1000:1000 /out/venv/ /opt/bourse/venv/
ENV PATH=/opt/bourse/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BOURSE_WORKER_HEARTBEAT_PATH=/tmp/bourse/worker.heartbeat \
    BOURSE_SCHEDULER_HEARTBEAT_PATH=/tmp/bourse/scheduler.heartbeat
WORKDIR /var/lib/bourse
USER 1000:1000
EXPOSE 8000
# Bourse is PID 1: SIGTERM starts its drain (bourse serve) or lets the running job
# finish (bourse worker), then it exits 0.
STOPSIGNAL SIGTERM
# The probe is a Python process: on a busy machine it needs more than a few seconds.
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 CMD ["bourse", "healthcheck"]
ENTRYPOINT ["bourse"]
CMD ["serve", "--host", "0.0.0.0"]

ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="Bourse" \
      org.opencontainers.image.description="A trading platform for brokerages" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
