# turnout operator image: the Kubernetes controller (`turnout operator`)
# and the `turnout` CLI (plan, crd, ...). Model servers run the engine images
# under images/; this image serves no model.
#
# Build from the repository root (see docs/images.md):
#   scripts/build-image.sh operator
#   docker build -t ghcr.io/turnout-dev/operator:0.1.0 .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Set by scripts/build-image.sh where pip must trust a CA bundle mounted from the host.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Dependencies first, from the set's lock (requirements/operator.txt, `make lock`), so a code change
# reuses this layer and every build installs the same versions.
COPY requirements/operator.txt /tmp/deps/
RUN python3 -m venv /opt/turnout \
    && /opt/turnout/bin/pip install --no-cache-dir -r /tmp/deps/operator.txt \
    && rm -rf /tmp/deps
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/turnout/bin/pip install --no-cache-dir --no-deps .

FROM ${BASE_IMAGE}
RUN useradd --no-log-init --uid 10001 --gid 0 --create-home --home-dir /home/turnout \
    --shell /usr/sbin/nologin turnout
COPY --from=build /opt/turnout /opt/turnout
ENV PATH=/opt/turnout/bin:$PATH \
    HOME=/home/turnout \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
WORKDIR /home/turnout
# Prometheus /metrics (`--metrics-port`); the /healthz probe port is 8081 (`--health-port`).
EXPOSE 8080
# Labels last: the revision changes with every commit and must not void the layer cache.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="turnout-operator" \
      org.opencontainers.image.description="turnout Kubernetes operator: resolves ModelDeployments to engine, image and placement" \
      org.opencontainers.image.source="https://github.com/turnout-dev/turnout" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="turnout" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENTRYPOINT ["turnout"]
CMD ["operator"]
