# PipelineJobs Manager: the Abaco (Tapis v2) / Tapis v3 actor image; also runs `pipelinejobs serve`.
# Abaco runs CMD once per message, with MSG and the URL parameters in the environment.
#
# Build: `make image` (docs/deploying.md), or by hand:
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t pipelinejobs-manager .
# Behind a proxy that re-signs HTTPS with a local CA, hand pip the host's bundle for the build only:
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt   (it is mounted into the pip steps, never copied)
#
# The base is Debian with Debian's own python3 (3.11 on bookworm), so the same base can be made from
# Debian's archive where no registry is reachable (tools/debian_base.sh); pin it further by digest with
# --build-arg BASE_IMAGE=docker.io/library/debian:12.15-slim@sha256:...
ARG BASE_IMAGE=docker.io/library/debian:12.15-slim

# -- python: the base plus Debian's python3 (the trust store for HTTPS is certifi's, from the lock: see ENV below)
FROM ${BASE_IMAGE} AS python
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -qq -y --no-install-recommends python3 >/dev/null \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
           /var/log/apt /var/log/dpkg.log /var/log/alternatives.log

# -- build: the virtual environment, from hashed locks only (`make lock`); nothing of this stage reaches the
# image but /opt/pipelinejobs. It starts from the base, not from `python`, so both stages build at once where
# the engine runs stages in parallel (BuildKit; podman build --jobs 2, as `make image` does).
FROM ${BASE_IMAGE} AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -qq -y --no-install-recommends python3 python3-venv binutils >/dev/null
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements.lock requirements-build.lock /tmp/locks/
# /opt/build: pip and the build backend (hatchling, pinned and hashed), used without build isolation so that
# the wheel is built by exactly the locked backend. /opt/pipelinejobs: no pip of its own; /opt/build's pip
# installs the locked runtime dependencies into it (--python), binary wheels only.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install --quiet --require-hashes --no-deps --only-binary=:all: -r /tmp/locks/requirements-build.lock \
 && python3 -m venv --without-pip /opt/pipelinejobs \
 && /opt/build/bin/pip --python /opt/pipelinejobs/bin/python install --quiet --no-compile \
      --require-hashes --no-deps --only-binary=:all: -r /tmp/locks/requirements.lock
# pyproject.toml force-includes config.yml (as pipelinejobs/defaults.yml) and schemas/ into the wheel,
# so both must be here before it is built.
COPY pyproject.toml README.md config.yml /src/
COPY schemas/ /src/schemas/
COPY pipelinejobs/ /src/pipelinejobs/
# Then: no tests of other packages, shared objects without their debug symbols (uvloop's alone is 13 MB of
# them), and every module compiled once, here (unchecked-hash .pyc: no stat of the source at import); the
# image's user could not write them.
RUN /opt/build/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /tmp/dist /src \
 && /opt/build/bin/pip --python /opt/pipelinejobs/bin/python install --quiet --no-compile --no-deps /tmp/dist/*.whl \
 && find /opt/pipelinejobs -depth \( -name '__pycache__' -o -path '*/site-packages/*/tests' \
      -o -path '*/site-packages/jsonschema/benchmarks' \) -type d -exec rm -rf {} + \
 && find /opt/pipelinejobs -name '*.so' -exec strip --strip-unneeded {} + \
 && /opt/pipelinejobs/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/pipelinejobs/lib

# -- the image: Debian's python3, the virtual environment, reactor.py and its config.yml
FROM python
# A user of its own (Abaco runs containers as the actor owner's uid anyway: nothing here needs root or a
# writable file; the .pyc files were made at build time).
RUN echo 'pipelinejobs:x:10001:10001:PipelineJobs Manager:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'pipelinejobs:x:10001:' >>/etc/group
COPY --from=build /opt/pipelinejobs /opt/pipelinejobs
# reactor.py reads the config.yml beside it (the settings a private image may bake in, e.g. admin.secret_sha256).
COPY reactor.py config.yml /
# HTTPS (webhooks, other actors, MongoDB over TLS) trusts the Mozilla roots of the locked certifi, the bundle
# httpx uses anyway, instead of Debian's ca-certificates + openssl (3 MB). SSL_CERT_FILE=<your bundle> replaces it.
ENV PATH=/opt/pipelinejobs/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/opt/pipelinejobs/lib/python3.11/site-packages/certifi/cacert.pem \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /
# Labels last: a new revision then rebuilds nothing but them.
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="PipelineJobs Manager" \
      org.opencontainers.image.description="Abaco / Tapis v3 actor that keeps the state of research pipeline jobs" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# Abaco: one `python /reactor.py` per message. -I (isolated): Abaco turns every URL parameter of a POST into an
# environment variable, so a caller could otherwise set PYTHONPATH, PYTHONHOME, PYTHONWARNINGS, PYTHONOPTIMIZE...
# The same image serves the local endpoint: `... IMAGE pipelinejobs serve --host 0.0.0.0` (docs/deploying.md).
CMD ["python", "-I", "/reactor.py"]
