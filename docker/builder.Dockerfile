# graft builder: build, export and verify (TensorFlow, Keras, tf2onnx, LiteRT).
#   docker build -f docker/builder.Dockerfile -t graft-builder .
#   docker run --rm -v "$PWD:/work" -w /work graft-builder build data -o bundle
FROM python:3.11-slim
WORKDIR /opt/graft
COPY pyproject.toml README.md ./
COPY graft ./graft
RUN pip install --no-cache-dir ".[build,litert]"
ENTRYPOINT ["graft"]
