# graft runtime: predict and serve on the CPU. No TensorFlow in this image.
#   docker build -f docker/runtime.Dockerfile -t graft-runtime .
#   docker run --rm -p 8000:8000 -v "$PWD/bundle:/model:ro" graft-runtime serve /model --host 0.0.0.0
FROM python:3.11-slim
WORKDIR /opt/graft
COPY pyproject.toml README.md ./
COPY graft ./graft
RUN pip install --no-cache-dir ".[serve,litert,parquet]" \
 && python -c "import sys, graft.runtime; assert 'tensorflow' not in sys.modules"
EXPOSE 8000
ENTRYPOINT ["graft"]
