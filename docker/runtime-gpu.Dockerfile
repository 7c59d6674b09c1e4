# syntax=docker/dockerfile:1
# graft runtime on NVIDIA GPUs: onnxruntime-gpu in place of the CPU onnxruntime. PyPI's
# onnxruntime-gpu (1.31) is built for CUDA 13 and cuDNN 9, so the base is CUDA 13 with cuDNN.
#   docker/build.sh runtime-gpu                                     (docker or podman)
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/bundle:/model:ro" graft-runtime-gpu \
#       serve /model --host 0.0.0.0 --device cuda
# The CUDA base must come from a registry (or a site's copy of it: --base); where none answers,
# docker/build.sh builds these steps on its Debian base, which has no CUDA libraries (there,
# onnxruntime-gpu says it needs libcublasLt.so.13 and runs on the CPU).
ARG BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# Python 3 with venv: python images have it; the CUDA (Ubuntu) and plain Debian bases get it from apt.
FROM ${BASE} AS python
RUN python3 -c "import ensurepip" 2>/dev/null || { apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*; }

FROM python AS build
ARG EXTRAS=serve
RUN python3 -m venv /opt/graft
WORKDIR /src
COPY docker/requirements.py pyproject.toml ./
# Dependencies first, in a layer that changes only with pyproject.toml or EXTRAS. The host's
# pip settings and CA bundle come in as build secrets (docker/build.sh), never into a layer.
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 requirements.py "$EXTRAS" --swap onnxruntime=onnxruntime-gpu --build-system > requirements.txt \
    && /opt/graft/bin/pip install --disable-pip-version-check -r requirements.txt
COPY graft ./graft
# pyproject.toml names README.md as the long description; an empty one keeps README edits from
# rebuilding this layer.
RUN touch README.md && /opt/graft/bin/pip install --disable-pip-version-check --no-deps --no-build-isolation --no-cache-dir . \
    && /opt/graft/bin/python -c "import sys, graft.runtime.server; assert 'tensorflow' not in sys.modules" \
    && /opt/graft/bin/python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" \
    && /opt/graft/bin/pip uninstall -y -q pip setuptools \
    && find /opt/graft/lib -depth -type d -name tests -exec rm -rf {} +
COPY docker/healthcheck.py /opt/graft/bin/graft-healthcheck

FROM python
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin graft
COPY --from=build /opt/graft /opt/graft
# HOME in /tmp: any --user can write there (onnxruntime keeps a session file in it).
ENV PATH=/opt/graft/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp GRAFT_CACHE=/tmp/graft-cache
USER graft
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/graft/bin/python", "/opt/graft/bin/graft-healthcheck"]
# Labels last: REVISION changes with every commit and would otherwise rebuild the layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="graft-runtime-gpu" \
      org.opencontainers.image.description="graft's runtime on NVIDIA GPUs: predict and serve (KServe v2) with onnxruntime-gpu; no TensorFlow" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["graft"]
CMD ["serve", "/model"]
