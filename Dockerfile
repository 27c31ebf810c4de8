# syntax=docker/dockerfile:1
# Turnout's container image (README "Container image"):
#
#   docker build -t turnout .
#   docker run -p 8080:8080 -v "$PWD/config/turnout.yaml:/etc/turnout/turnout.yaml:ro" turnout
#
# The config is a mounted file, its secrets `${ENV}` references set with `-e` or from
# Kubernetes Secrets (deploy/kubernetes/). tests/unit/deploy/test_dockerfile.py holds
# this file to its rules; tests/e2e/test_image_install.py runs its install steps and its
# command line.

# Both stages must use the same image: the virtualenv built in the first is copied into
# the second and points at this image's interpreter (/usr/local/bin/python3.11).
# 3.11: pyproject.toml's requires-python, the oldest version supported and tested.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Compilers live in this stage only. Every dependency ships wheels for linux amd64 and
# arm64 today; a platform or a release without one is compiled here, never in the image.
# Unpinned (DL3008): build-essential is a meta-package whose version follows the base
# image's Debian release, and this stage's output is pinned by the wheels it builds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The same script the test command runs against a clean venv, so they cannot drift.
RUN --mount=type=cache,target=/root/.cache/pip \
    PYTHON=python3 scripts/image_install.sh /opt/venv

FROM ${PYTHON_IMAGE} AS runtime
# A numeric user, so Kubernetes can verify `runAsNonRoot` without reading /etc/passwd.
RUN groupadd --system --gid 10001 turnout \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin turnout
COPY --from=build /opt/venv /opt/venv
# Bytecode was compiled at install; the root filesystem may be read-only at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
# No curl in a slim image: the interpreter that is there anyway asks /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# turnout is PID 1 (exec form, no shell in between), so SIGTERM reaches it and starts its drain.
ENTRYPOINT ["turnout", "serve"]
# Listen on every interface of the container's own network namespace, whatever the
# mounted config's server.host says (its default, 127.0.0.1, would be unreachable).
CMD ["--config", "/etc/turnout/turnout.yaml", "--host", "0.0.0.0", "--port", "8080"]
