"""What an ONNX file says about itself, for graft and for generic tools.

graft's portable manifest travels in ``metadata_props`` under ``graft.manifest``.
Beside it go what generic ONNX tools read: producer ``graft`` and its version,
an integer ``model_version``, a description, the graph named after the bundle,
``labels`` as a JSON list, ONNX's image metadata keys (``Image.BitmapPixelFormat``,
``Image.ColorSpaceGamma``, ``Image.NominalPixelRange``) and flat keys for the
input layout and size, and a batch dimension named ``batch``. Leftovers of the
quantizers (their own metadata keys, unused opset imports) are removed.
"""

from __future__ import annotations

import json
from pathlib import Path

import graft
from graft import bundle
from graft.errors import ExportError

BATCH_DIM = "batch"


def conventional_props(manifest: dict) -> dict[str, str]:
    """Flat metadata keys that generic tools and people read (all values are strings)."""
    prep = manifest["preprocessing"]
    height, width = prep["size"]
    return {
        "labels": json.dumps(manifest["labels"]),
        "Image.BitmapPixelFormat": "Rgb8",
        "Image.ColorSpaceGamma": "SRGB",
        "Image.NominalPixelRange": "NominalRange_0_255",
        "input_layout": "NHWC",
        "input_size": json.dumps([height, width]),
        "channel_order": prep.get("channel_order", "RGB"),
        "pixel_range": json.dumps(prep.get("range", [0, 255])),
        "resize": prep.get("resize", "stretch"),
    }


def model_version(manifest: dict) -> int:
    """An integer version for ONNX's model_version: the build time as YYYYMMDDhhmmss."""
    digits = "".join(ch for ch in str(manifest.get("created", "")) if ch.isdigit())[:14]
    return int(digits) if digits else 1


def stamp(proto, manifest: dict, export: dict) -> None:
    """Write graft's manifest and the conventional metadata into ``proto`` (in place)."""
    portable = {**bundle.portable_manifest(manifest), "export": export}
    props = {**conventional_props(manifest), bundle.METADATA_KEY: json.dumps(portable)}
    del proto.metadata_props[:]  # drops the quantizers' own keys too
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    labels = len(manifest["labels"])
    height, width = manifest["preprocessing"]["size"]
    proto.producer_name, proto.producer_version = "graft", graft.__version__
    proto.domain = "ai.graft"
    proto.model_version = model_version(manifest)
    proto.doc_string = (f"Image classifier ({labels} labels). Input 'pixels': float32 NHWC "
                        f"[batch, {height}, {width}, 3], RGB 0..255. Output: probabilities [batch, {labels}].")
    proto.graph.name = str(manifest.get("name") or "graft")
    name_batch_dimension(proto)
    drop_unused_opsets(proto)


def name_batch_dimension(proto) -> None:
    """Name the first dimension of every graph input and output ``batch`` (when it is dynamic)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM


def drop_unused_opsets(proto) -> None:
    """Remove opset imports for domains no node uses (the default domain always stays)."""
    used = {node.domain or "" for node in proto.graph.node}
    kept = [op for op in proto.opset_import if (op.domain or "") in used or (op.domain or "") in ("", "ai.onnx")]
    if len(kept) != len(proto.opset_import):
        del proto.opset_import[:]
        proto.opset_import.extend(kept)


def save_checked(proto, path: Path) -> None:
    """onnx.checker, then an atomic write."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the converted ONNX model fails onnx.checker: {str(exc)[:300]}") from exc
    bundle.atomic_write_bytes(path, proto.SerializeToString())
