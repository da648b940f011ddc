# Diptych for GPU hosts: CUDA runtime, vLLM, diffusers and the package, installed by the
# same `make install` the README uses. CPU hosts: deploy/Dockerfile.cpu.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

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

RUN useradd --create-home --uid 1000 diptych
WORKDIR /opt/diptych
COPY --chown=diptych:diptych pyproject.toml Makefile README.md ./
COPY --chown=diptych:diptych diptych ./diptych
USER 1000
RUN make install EXTRA=cuda

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
CMD [".venv/bin/diptych", "serve"]
