# graft runtime on NVIDIA GPUs: onnxruntime-gpu (CUDA 12) replaces the CPU onnxruntime.
#   docker build -f docker/runtime-gpu.Dockerfile -t graft-runtime-gpu .
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/bundle:/model:ro" graft-runtime-gpu \
#       serve /model --host 0.0.0.0 --device cuda
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/graft
COPY pyproject.toml README.md ./
COPY graft ./graft
RUN pip install --no-cache-dir ".[serve]" \
 && pip uninstall -y onnxruntime && pip install --no-cache-dir "onnxruntime-gpu>=1.18"
EXPOSE 8000
ENTRYPOINT ["graft"]
