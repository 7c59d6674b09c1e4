# syntax=docker/dockerfile:1
# graft builder: build, export, verify and report (TensorFlow, Keras, tf2onnx, LiteRT).
#   docker/build.sh builder                                          (docker or podman)
#   docker run --rm --network host -v "$PWD/photos:/data:ro" -v "$PWD/out:/out" graft-builder \
#       build /data -o /out/bundle
#   docker run --rm --network host -v "$PWD/photos:/data:ro" -v "$PWD/out:/out" graft-builder \
#       export /out/bundle --format tflite --precision int8      (the data again: exports are checked)
# It runs as user 10001; give it a writable output folder, or add --user "$(id -u):$(id -g)".
# TensorFlow is the CPU-only wheel; --build-arg TENSORFLOW=tensorflow takes the full one.
ARG BASE=python:3.11-slim

# Python 3 with venv: python images have it; plain Debian or Ubuntu bases get it from apt.
FROM ${BASE} AS python
RUN python3 -c "import ensurepip" 2>/dev/null || { apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*; }

FROM python
ARG EXTRAS=build,report
ARG TENSORFLOW=tensorflow-cpu
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin graft
WORKDIR /src
COPY docker/requirements.py pyproject.toml ./
# One stage: nothing is compiled, and copying TensorFlow from a build stage costs minutes.
# Dependencies first, in a layer that changes only with pyproject.toml or the build arguments,
# and the test suites that wheels ship removed in the same layer. The host's pip settings and
# CA bundle come in as build secrets (docker/build.sh), never into a layer.
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/graft \
    && python3 requirements.py "$EXTRAS" --swap "tensorflow=$TENSORFLOW" --build-system > requirements.txt \
    && /opt/graft/bin/pip install --disable-pip-version-check -r requirements.txt \
    && find /opt/graft/lib -depth -type d -name tests \
       \( -path '*/numpy/*' -o -path '*/scipy/*' -o -path '*/skimage/*' -o -path '*/matplotlib/*' \
          -o -path '*/networkx/*' -o -path '*/sympy/*' \) -exec rm -rf {} +
COPY graft ./graft
# pyproject.toml names README.md as the long description; an empty one keeps README edits from
# rebuilding this layer. pip stays, so a site can add packages to this image.
RUN touch README.md && /opt/graft/bin/pip install --disable-pip-version-check --no-deps --no-build-isolation --no-cache-dir . \
    && rm -rf /src
# HOME and caches in /tmp, so any --user can write them; mount a volume on /tmp/graft-cache
# to keep converted weights and features between runs.
ENV PATH=/opt/graft/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp GRAFT_CACHE=/tmp/graft-cache KERAS_HOME=/tmp/keras MPLCONFIGDIR=/tmp/matplotlib
USER graft
WORKDIR /tmp
# Labels last: REVISION changes with every commit and would otherwise rebuild the layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="graft-builder" \
      org.opencontainers.image.description="graft's builder: transfer learning on a frozen Keras backbone, ONNX and TFLite export, verification, reports" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["graft"]
CMD ["--help"]
