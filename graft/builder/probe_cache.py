"""Hand the probe's features to the build that follows it.

The probe extracts each family's cuts together; a build extracts one cut with
its own backbone (``load_backbone(name, cut_layer=...)``), whose feature cache
and converted ONNX file are keyed by that backbone. ``seed_build_cache`` writes
the chosen cut's ONNX sub-graph (cut from the family's converted model) and its
slice of the cached features under the build's keys, so the build converts
nothing and extracts nothing; its parity check against Keras still runs on a
sample of the images before the features are used.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from graft.builder import onnx_features as ox
from graft.builder.backbones import load_backbone
from graft.builder.backbones.cuts import TOP
from graft.builder.features import FeatureCache
from graft.builder.probe_cost import OUTPUT, _concat_inputs
from graft.builder.shards import ShardWriter
from graft.bundle import atomic_write_bytes


def features_onnx(family_onnx: bytes, index: int, dims: list[int]) -> bytes:
    """The family's converted model cut at cut ``index``: pixels -> that cut's pooled features."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(family_onnx)
    if len(dims) == 1:
        return family_onnx
    tensor = _concat_inputs(model.graph)[index]
    model.graph.value_info.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT,
                                                                [None, int(dims[index])]))
    sub = onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], [tensor])
    sub.graph.node.append(helper.make_node("Identity", [tensor], [OUTPUT]))
    del sub.graph.output[:]
    sub.graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, [None, int(dims[index])]))
    return sub.SerializeToString()


def seed_build_cache(family, ext, cut: str, cache_root: Path) -> str:
    """Write ``cut``'s converted model and features where a build of it looks; its cache key."""
    import tf2onnx

    index = family.cuts.index(cut)
    backbone = load_backbone(family.backbone, None, family.image_size,
                             None if cut == TOP else cut, cache_dir=cache_root)
    data = features_onnx(ext.extractor.onnx, index, family.dims)
    record = {"sha256": hashlib.sha256(data).hexdigest(), "opset": ox.OPSET, "tf2onnx": tf2onnx.__version__,
              "size_bytes": len(data), "seconds": 0.0, "from": "graft probe (cut from its feature model)",
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    model_path, record_path = ox.onnx_paths(cache_root, backbone.cache_key)
    if not ox.is_converted(cache_root, backbone.cache_key):
        atomic_write_bytes(model_path, data)
        ox._write_record(record_path, record)
    data, record = ox.backbone_onnx(backbone, cache_root)  # whichever file the build will use
    if data != features_onnx(ext.extractor.onnx, index, family.dims):
        return backbone.cache_key  # converted by a build before: its own features stay its own
    cache = FeatureCache(cache_root, backbone.cache_key, _contract(ext),
                         ox.extractor_tag(record))
    keys = [cache.key(sha) for sha in ext.content_sha]
    missing = np.flatnonzero(cache.store.index().find(keys) < 0)
    if len(missing):
        part = family.slices()[cut]
        writer = ShardWriter(cache.store, part.stop - part.start)
        writer.add([keys[i] for i in missing], ext.rows.take(missing)[:, part])
        writer.close()
    return backbone.cache_key


def _contract(ext) -> dict:
    import json

    return json.loads(ext.cache.salt.decode())
