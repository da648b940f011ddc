# Diptych for GPU hosts: CUDA runtime, vLLM, diffusers and the package, installed by the
# same `make install` the README uses. CPU hosts: deploy/Dockerfile.cpu.
# BASE_IMAGE carries the CUDA that PyPI's torch wheels for pyproject.toml's pin are built for
# ([tool.diptych.images] cuda; a test keeps the two in step).
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# Where pip finds packages at build time, all optional: a mirror (PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL), a wheel directory mounted into the build (PIP_FIND_LINKS), a CA bundle
# for either (PIP_CERT). Only the build sees them.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DIPTYCH_HOST=0.0.0.0 \
    DIPTYCH_PORT=8000 \
    DIPTYCH_DEVICE=cuda \
    DIPTYCH_CACHE_DIR=/home/diptych/.cache/diptych

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev make gcc curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04 images already have a user with uid 1000 (ubuntu); the server runs as its own.
RUN useradd --create-home --uid 1001 diptych
WORKDIR /opt/diptych
RUN chown diptych:diptych /opt/diptych
COPY --chown=diptych:diptych pyproject.toml Makefile README.md ./
COPY --chown=diptych:diptych deploy/torch_wheels.py ./deploy/
COPY --chown=diptych:diptych diptych ./diptych
USER 1001
# EXTRAS= : the image serves; the benches' and the tests' packages stay out of it. The cache
# directory exists in the image, owned by its user, so that a named volume mounted there starts
# with that owner.
RUN mkdir -p "$DIPTYCH_CACHE_DIR" && make install EXTRA=cuda EXTRAS=

EXPOSE 8000
# Through sh, so that a DIPTYCH_PORT set at run time is the port it asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${DIPTYCH_PORT}/health"]
CMD [".venv/bin/diptych", "serve"]
