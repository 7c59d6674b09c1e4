"""The OpenAPI 3 document of the server, written by hand to match the real routes."""

from __future__ import annotations

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}}}}
_INFER_REQUEST = {
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {
            "timeout": {"type": "integer", "minimum": 0, "description": "Microseconds."},
            "binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": ["FP32", "UINT8", "BYTES"]},
                "parameters": {"type": "object"},
                "data": {"type": "array", "description": "Numbers (FP32, UINT8, flat or nested) "
                         "or base64 strings of encoded images (BYTES)."}}}},
        "outputs": {"type": "array", "maxItems": 1, "items": {
            "type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"},
                "parameters": {"type": "object", "properties": {
                    "classification": {"type": "integer", "minimum": 0},
                    "binary_data": {"type": "boolean"}}}}}},
    },
}
_INFER_RESPONSE = {
    "type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {**_TENSOR_META, "properties": {
            **_TENSOR_META["properties"], "data": {"type": "array"}}}}}}
_CLASSIFY_RESPONSE = {
    "type": "object", "required": ["model_name", "model_version", "results"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "results": {"type": "array", "items": {"type": "object", "properties": {
            "filename": {"type": "string", "nullable": True},
            "predictions": {"type": "array", "items": {"type": "object", "properties": {
                "label": {"type": "string"}, "score": {"type": "number"}}}}}}}}}
_REPOSITORY_INDEX = {"type": "array", "items": {
    "type": "object", "required": ["name", "state", "reason"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]}, "reason": {"type": "string"}}}}
_MODEL_METADATA = {
    "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR_META}, "outputs": {"type": "array", "items": _TENSOR_META}}}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {400: "Malformed request", 404: "Unknown model or version", 405: "Method not allowed",
            408: "Body not received in time", 413: "Body, image or request pixels too large",
            415: "Not a supported image", 503: "Queue full, model not ready, or shutting down",
            504: "Deadline passed"}
    return {str(code): _json(_ERROR, text[code]) for code in codes}


def _params(versioned: bool) -> list[dict]:
    params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    if versioned:
        params.append({"name": "version", "in": "path", "required": True, "schema": {"type": "string"}})
    return params


def _model_paths(prefix: str, versioned: bool) -> dict:
    params = _params(versioned)
    infer_errors = _errors(400, 404, 408, 413, 415, 503, 504)
    return {
        prefix: {"get": {"summary": "Model metadata", "parameters": params,
                         "responses": {"200": _json(_MODEL_METADATA), **_errors(404)}}},
        prefix + "/ready": {"get": {"summary": "Model readiness", "parameters": params, "responses": {
            "200": _json({"type": "object", "properties": {"name": {"type": "string"},
                                                           "ready": {"type": "boolean"}}}),
            **_errors(404, 503)}}},
        prefix + "/config": {"get": {"summary": "Model configuration (Triton's shape)", "parameters": params,
                                     "responses": {"200": _json({"type": "object"}), **_errors(404)}}},
        prefix + "/infer": {"post": {
            "summary": "Inference (Open Inference Protocol)", "parameters": params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _INFER_REQUEST}}},
            "responses": {"200": _json(_INFER_RESPONSE), **infer_errors}}},
        prefix + "/classify": {"post": {
            "summary": "Top-k labels for an uploaded image", "parameters": params + [
                {"name": "top_k", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "image": {"type": "string", "format": "binary"}}}}}},
            "responses": {"200": _json(_CLASSIFY_RESPONSE), **infer_errors}}},
    }


def _repository_paths() -> dict:
    name = _params(False)
    refused = {"summary": "Refused: models are loaded at startup (as Triton without model control)",
               "parameters": name, "responses": _errors(400, 404)}
    return {
        "/v2/repository/index": {"post": {
            "summary": "Model repository index (Triton's model repository extension)",
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"ready": {"type": "boolean"}}}}}},
            "responses": {"200": _json(_REPOSITORY_INDEX), **_errors(400, 408, 413)}}},
        "/v2/repository/models/{name}/load": {"post": refused},
        "/v2/repository/models/{name}/unload": {"post": refused},
    }


def document(version: str) -> dict:
    simple = lambda summary, schema, *codes: {"get": {  # noqa: E731
        "summary": summary, "responses": {"200": _json(schema), **_errors(*codes)}}}
    flag = lambda key: {"type": "object", "properties": {key: {"type": "boolean"}}}  # noqa: E731
    paths = {
        "/": {"get": {"summary": "A page to try the models on an image", "responses": {"200": {
            "description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/v2/health/live": simple("Liveness", flag("live")),
        "/v2/health/ready": simple("Readiness (503 while shutting down or when a model is not ready)",
                                   flag("ready"), 503),
        "/v2": simple("Server metadata", {"type": "object", "required": ["name", "version", "extensions"],
                                          "properties": {"name": {"type": "string"},
                                                         "version": {"type": "string"},
                                                         "extensions": {"type": "array",
                                                                        "items": {"type": "string"}}}}),
        "/v2/models": simple("Loaded models and versions", {"type": "object", "properties": {
            "models": {"type": "array"}}}),
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        **_model_paths("/v2/models/{name}", False),
        **_model_paths("/v2/models/{name}/versions/{version}", True),
        **_repository_paths(),
    }
    return {"openapi": "3.0.3",
            "info": {"title": "graft inference server", "version": version,
                     "description": "The Open Inference Protocol (KServe v2) REST API with the "
                                    "classification, binary tensor data, model configuration and model repository "
                                    "(index) extensions, /classify and a page at /."},
            "paths": paths}
