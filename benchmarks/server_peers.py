"""The peers bench_server.py runs against `graft serve`; they import nothing of graft.

``peer_app`` is the tuned-KServe architecture in a few lines: started as
`uvicorn server_peers:peer_app --factory --workers 2`, each worker process holds
one onnxruntime session with one thread and, in its request handler, decodes
the JPEG in PIL's draft mode, resizes it to the model's input, runs the model and
answers the top label as JSON (as a KServe model whose ``predict`` is a plain
function: it runs on the worker's event loop).

It reads its settings (the ONNX file, the labels) as JSON from the
environment variable named by ``PEER_ENV``.
"""

from __future__ import annotations

import io
import json
import os

PEER_ENV = "BENCH_SERVER_PEER"


class OnnxTop1:
    """One onnxruntime session of one thread; ``predict(jpeg_bytes)`` is the top label and score."""

    def __init__(self, model: str, labels: list[str]):
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.height, self.width = self.input.shape[1:3]
        self.labels, self.np = labels, np

    def predict(self, body: bytes) -> dict:
        from PIL import Image

        image = Image.open(io.BytesIO(body))
        image.draft("RGB", (self.width, self.height))
        image = image.convert("RGB").resize((self.width, self.height), Image.BILINEAR)
        pixels = self.np.asarray(image, self.np.float32)[None]
        probs = self.session.run(None, {self.input.name: pixels})[0][0]
        top = int(probs.argmax())
        return {"predictions": [{"label": self.labels[top], "score": float(probs[top])}]}


def peer_app():
    """The ASGI app of one worker process (uvicorn --factory)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    settings = json.loads(os.environ[PEER_ENV])
    model = OnnxTop1(settings["model"], settings["labels"])

    async def classify(request):
        return JSONResponse(model.predict(await request.body()))

    async def ready(request):
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/classify", classify, methods=["POST"]),
                             Route("/v2/health/ready", ready)])
