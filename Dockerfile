# One image for both halves of nodeaudit:
#   * the operator (Deployment): `nodeaudit run`, as uid 10001 on a read-only root filesystem;
#   * the per-node Job: runs as root (the Job sets runAsUser: 0) and needs sh, cp, nsenter
#     (util-linux) and chroot (coreutils) to copy the bundle to the host and run apply.sh there.
#
# BASE_IMAGE must be a Debian-family image with python3 (>= 3.10) and `python3 -m venv`: the official
# python:*-slim-bookworm images (python in /usr/local) and a plain Debian with python3-venv
# (python in /usr) both work. Both stages use the same BASE_IMAGE, so the venv built in the first
# stage points at an interpreter that exists at the same path in the second.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Optional pip settings for a mirror or an offline wheelhouse (e.g. --build-arg PIP_NO_INDEX=1
# --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/); unset unless given, so pip uses PyPI.
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md constraints.txt ./
COPY operator/ operator/
# Build the wheel first (what gets installed is exactly what `pip wheel` packaged, package data
# such as host/*.sh included), then install it with its dependencies, at the versions of
# constraints.txt (the project's one list of pins), into the venv. pip compiles
# the .pyc files at install time, so nothing needs to be written under /opt/venv at run time.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /dist . \
 && /opt/venv/bin/pip install --constraint constraints.txt /dist/nodeaudit-*.whl \
 && /opt/venv/bin/nodeaudit --help >/dev/null

FROM ${BASE_IMAGE}
# `make image` passes VERSION from operator/nodeaudit/__init__.py (the one place for it).
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="nodeaudit" \
      org.opencontainers.image.description="Kubernetes operator that keeps auditd (-> syslog authpriv -> Log Analytics) on every AKS worker node" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="nodeaudit"
# Fail the build, not the first node Job, when the base lacks a tool the Job needs.
RUN for tool in sh cp nsenter chroot; do command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }; done \
 && groupadd --system --gid 10001 nodeaudit \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin nodeaudit
COPY --from=build /opt/venv /opt/venv
# Read-only root filesystem: no .pyc writes at run time and HOME on the /tmp emptyDir (the only
# writable path; azure-identity and kopf write nothing else).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
ENTRYPOINT ["nodeaudit"]
CMD ["run"]
