"""Standard TFLite Metadata for graft's .tflite files, so stock MediaPipe Tasks runs them.

``add_metadata`` turns the converter's bytes into one self-describing file:

* ``TFLITE_METADATA``: a ModelMetadata flatbuffer (``metadata_schema.fbs``, identifier
  ``M001``) with the model's name, description, version, author and license; the
  input as an RGB image whose pixels (0..255) go in raw (NormalizationOptions mean 0,
  std 1: graft's graphs normalise inside); the output as class scores with
  ``labels.txt`` as its TENSOR_AXIS_LABELS file, and ``graft.json`` as a model file;
* ``graft.manifest``: graft's portable manifest (UTF-8 JSON), as every graft runtime reads;
* an uncompressed zip of ``labels.txt`` and ``graft.json`` appended after the
  flatbuffer (MediaPipe expects STORED entries). Rewriting the flatbuffer later drops
  the archive, so everything is written here in one pass.

TensorFlow-free: the model is unpacked and packed with the schema module of
ai-edge-litert (at least as new as the converter), the metadata built with ``flatbuffers``.
"""

from __future__ import annotations

import io
import json
import zipfile

import flatbuffers
import numpy as np

from graft.bundle import METADATA_KEY, parse_manifest, portable_manifest
from graft.errors import BundleError, ExportError, first_line
from graft.runtime.tflite_metadata import (FIELDS, LABELS_FILE, MANIFEST_FILE, METADATA_IDENTIFIER,
                                           TENSOR_AXIS_LABELS, TFLITE_METADATA)

MIN_PARSER_VERSION = "1.0.0"  # only schema 1.0.0 fields are written
RGB, FEATURE_PROPERTIES, IMAGE_PROPERTIES, NORMALIZATION_OPTIONS, UNKNOWN_FILE = 1, 1, 2, 1, 0
MEDIAPIPE_DTYPES = ("uint8", "float32")  # what MediaPipe Tasks takes for image input and scores
_SCALARS = {("AssociatedFile", "type"): "Int8", ("ImageProperties", "color_space"): "Int8",
            ("ImageSize", "width"): "Uint32", ("ImageSize", "height"): "Uint32",
            ("Content", "content_properties_type"): "Uint8", ("ProcessUnit", "options_type"): "Uint8"}


def add_metadata(model: bytes, manifest: dict, export: dict | None = None,
                 model_license: str | None = None) -> bytes:
    """One .tflite file: the model, standard TFLite Metadata, graft's manifest and labels.

    Args:
        model: the TFLite converter's output (a flatbuffer with no appended archive).
        manifest: graft's manifest (``graft.json``); its portable part is embedded.
        export: facts about this file (format, precision, I/O), stored as ``export``.
        model_license: the model's license; default: the manifest's ``license``, else
            a note that the backbone's weights keep their own license.

    Returns:
        The file's bytes; write them as they are (any rewrite drops the archive).

    Raises:
        ExportError: the bytes are not a single-input, single-output image model whose
            shapes match the manifest, or the manifest is invalid.
    """
    portable = {**portable_manifest(manifest), **({"export": export} if export else {})}
    try:
        payload = json.dumps(portable).encode()
        parse_manifest(payload, "the manifest to embed")
    except (TypeError, ValueError, BundleError) as exc:
        raise ExportError(f"the manifest cannot be embedded: {first_line(exc)}") from None
    if any("\n" in label or "\r" in label for label in portable["labels"]):
        raise ExportError("a label contains a line break; labels.txt holds one label per line: "
                          "rename that class")
    tree = _unpack(model)
    tensors = _check_io(tree, portable)
    labels = "\n".join(portable["labels"]).encode() + b"\n"
    _set_metadata(tree, {TFLITE_METADATA: _model_metadata(portable, tensors, model_license),
                         METADATA_KEY: payload})
    return _with_archive(_pack(tree), {LABELS_FILE: labels, MANIFEST_FILE: payload})


def io_tensors(model: bytes) -> dict:
    """The model's input and output: {"input"/"output": {name, dtype, shape, scale, zero_point}}.

    Raises:
        ExportError: the bytes are not a TFLite flatbuffer.
    """
    return _io(_unpack(model))


def mediapipe_problems(model: bytes) -> list[str]:
    """Why stock MediaPipe Tasks' ImageClassifier would refuse or misread this model ([] if none).

    MediaPipe feeds uint8 pixels raw (so a uint8 input must have scale 1 and
    zero-point 0) and float32 input as (pixel - mean) / std; it takes uint8 or
    float32 tensors only, with a batch of 1.
    """
    tensors = io_tensors(model)
    problems = []
    for role, tensor in tensors.items():
        if tensor["dtype"] not in MEDIAPIPE_DTYPES:
            problems.append(f"the {role} is {tensor['dtype']}; MediaPipe takes uint8 or float32 "
                            "(export int8 with --io-dtype uint8)")
    first = tensors["input"]
    if first["dtype"] == "uint8" and (abs(first["scale"] - 1.0) > 1e-6 or first["zero_point"] != 0):
        problems.append(f"the uint8 input has scale {first['scale']:.6g} and zero-point "
                        f"{first['zero_point']}; MediaPipe feeds raw pixels, which needs 1 and 0")
    if first["shape"][:1] != [1]:
        problems.append(f"the input shape {first['shape']} has no batch of 1")
    return problems


# ---------------------------------------------------------------------- the TFLite model
def _unpack(model: bytes):
    from ai_edge_litert import schema_py_generated as schema

    data = bytes(model)
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ExportError(f"not a TFLite flatbuffer ({len(data)} bytes without the TFL3 "
                          "identifier); pass the TFLite converter's output")
    try:
        tree = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # a damaged flatbuffer raises struct/index/type errors
        raise ExportError(f"the TFLite flatbuffer cannot be read: {first_line(exc)}") from None
    if any((buffer.offset or 0) > 1 for buffer in tree.buffers or []):
        raise ExportError("the model keeps its weights after the flatbuffer (a model over 2 GB); "
                          "metadata cannot be added to that layout")
    return tree


def _pack(tree) -> bytes:
    builder = _AlignedBuilder(1 << 16)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _AlignedBuilder(flatbuffers.Builder):
    """Writes byte vectors (Buffer.data) 16-byte aligned, as the schema's force_align asks."""

    def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
        if x.dtype != np.uint8 or x.ndim != 1:
            return super().CreateNumpyVector(x)
        self.StartVector(1, x.size, 16)
        self.head -= x.size
        self.Bytes[self.head:self.head + x.size] = x.tobytes()
        return self.EndVector()


def _io(tree) -> dict:
    graph = tree.subgraphs[0]
    return {"input": _describe(graph.tensors[graph.inputs[0]]),
            "output": _describe(graph.tensors[graph.outputs[0]])}


def _describe(tensor) -> dict:
    from ai_edge_litert.schema_py_generated import TensorType

    names = {value: key.lower() for key, value in vars(TensorType).items() if not key.startswith("_")}
    quant = tensor.quantization
    scales = quant.scale if quant is not None and quant.scale is not None else []
    zeros = quant.zeroPoint if quant is not None and quant.zeroPoint is not None else []
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    return {"name": name, "dtype": names.get(tensor.type, str(tensor.type)),
            "shape": [int(d) for d in tensor.shape], "scale": float(scales[0]) if len(scales) else 0.0,
            "zero_point": int(zeros[0]) if len(zeros) else 0}


def _check_io(tree, manifest: dict) -> dict:
    graphs = tree.subgraphs or []
    if len(graphs) != 1 or len(graphs[0].inputs) != 1 or len(graphs[0].outputs) != 1:
        counts = [(len(g.inputs), len(g.outputs)) for g in graphs]
        raise ExportError(f"expected one subgraph with one input and one output; received "
                          f"(inputs, outputs) per subgraph {counts}")
    tensors = _io(tree)
    height, width = manifest["preprocessing"]["size"]
    shape = tensors["input"]["shape"]
    if len(shape) != 4 or shape[1:] != [height, width, 3]:
        raise ExportError(f"the model's input shape {shape} is not (N, {height}, {width}, 3) as "
                          "the manifest's preprocessing.size says; export from the bundle's model")
    classes = tensors["output"]["shape"][-1:]
    if classes != [len(manifest["labels"])]:
        raise ExportError(f"the model has {classes} outputs but the manifest has "
                          f"{len(manifest['labels'])} labels; export from the bundle's model")
    return tensors


def _set_metadata(tree, entries: dict[str, bytes]) -> None:
    """Replace (or add) named metadata entries, each with a new buffer at the end."""
    from ai_edge_litert import schema_py_generated as schema

    kept, dropped = [], set()
    for entry in tree.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
        if name in entries:
            dropped.add(entry.buffer)
        else:
            kept.append(entry)
    used = {t.buffer for g in tree.subgraphs for t in g.tensors} | {e.buffer for e in kept}
    while tree.buffers and len(tree.buffers) - 1 in dropped - used:
        tree.buffers.pop()  # a previous run's buffers, so a re-run gives the same bytes
    for name, payload in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(payload, dtype=np.uint8)
        tree.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(tree.buffers) - 1
        kept.append(entry)
    tree.metadata = kept


# ----------------------------------------------------------------- the metadata flatbuffer
def _model_metadata(manifest: dict, tensors: dict, model_license: str | None) -> bytes:
    b = flatbuffers.Builder(1024)
    labels_file = _file(b, LABELS_FILE, "Class labels, one per line, in output index order.",
                        TENSOR_AXIS_LABELS)
    manifest_file = _file(b, MANIFEST_FILE, "graft's manifest (JSON): labels, preprocessing "
                          "contract, provenance; what graft's runtime reads.", UNKNOWN_FILE)
    height, width = manifest["preprocessing"]["size"]
    size = _table(b, "ImageSize", width=width, height=height)
    image = _table(b, "ImageProperties", color_space=RGB, default_size=size)
    norm = _table(b, "NormalizationOptions", mean=_floats(b, [0.0]), std=_floats(b, [1.0]))
    unit = _table(b, "ProcessUnit", options_type=NORMALIZATION_OPTIONS, options=norm)
    inputs = _table(b, "TensorMetadata", name=b.CreateString("image"),
                    description=b.CreateString(_input_text(manifest, tensors["input"])),
                    content=_table(b, "Content", content_properties_type=IMAGE_PROPERTIES,
                                   content_properties=image),
                    process_units=_vector(b, [unit]), stats=_stats(b, 0.0, 255.0))
    outputs = _table(b, "TensorMetadata", name=b.CreateString("probabilities"),
                     description=b.CreateString(f"Probabilities of the {len(manifest['labels'])} "
                                                "classes (softmax), in the order of labels.txt."),
                     content=_table(b, "Content", content_properties_type=FEATURE_PROPERTIES,
                                    content_properties=_table(b, "FeatureProperties")),
                     stats=_stats(b, 0.0, 1.0), associated_files=_vector(b, [labels_file]))
    subgraph = _table(b, "SubGraphMetadata", name=b.CreateString("image_classifier"),
                      input_tensor_metadata=_vector(b, [inputs]),
                      output_tensor_metadata=_vector(b, [outputs]))
    texts = _model_texts(manifest, model_license)
    strings = {key: b.CreateString(value) for key, value in texts.items()}
    root = _table(b, "ModelMetadata", **strings, subgraph_metadata=_vector(b, [subgraph]),
                  associated_files=_vector(b, [manifest_file]),
                  min_parser_version=b.CreateString(MIN_PARSER_VERSION))
    b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def _model_texts(manifest: dict, model_license: str | None) -> dict[str, str]:
    labels = manifest["labels"]
    shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
    backbone = manifest.get("backbone") or {}
    origin = f" on a frozen {backbone['name']} backbone" if backbone.get("name") else ""
    text = model_license or manifest.get("license") or (
        "Unspecified by the model's author; pretrained backbone weights keep their own license "
        f"({backbone.get('source', 'see graft.json')}).")
    return {"name": str(manifest.get("name") or "graft image classifier"),
            "description": f"Image classifier over {len(labels)} classes ({shown}), trained "
                           f"with graft{origin}.",
            "version": str(manifest.get("created") or manifest.get("graft_version") or "1"),
            "author": "graft", "license": text}


def _input_text(manifest: dict, tensor: dict) -> str:
    prep = manifest["preprocessing"]
    height, width = prep["size"]
    text = (f"RGB image, {width}x{height} ({tensor['dtype']}), pixels 0..255 fed raw "
            f"(normalisation is inside the model); resized by {prep.get('resize', 'stretch')} "
            f"with {prep.get('interpolation', 'bilinear')} interpolation.")
    if prep.get("resize") == "crop":
        text += (" The model was trained on centre crops to its aspect ratio: give stock "
                 "runtimes that centre region of interest, as they stretch the whole image.")
    return text


def _table(b: flatbuffers.Builder, kind_of_table: str, /, **fields) -> int:
    """A metadata_schema.fbs table from already-built offsets and scalar values."""
    b.StartObject(len(FIELDS[kind_of_table]))
    for field, value in fields.items():
        index = FIELDS[kind_of_table].index(field)
        kind = _SCALARS.get((kind_of_table, field))
        if kind:
            getattr(b, f"Prepend{kind}Slot")(index, value, 0)
        else:
            b.PrependUOffsetTRelativeSlot(index, value, 0)
    return b.EndObject()


def _file(b: flatbuffers.Builder, name: str, description: str, kind: int) -> int:
    return _table(b, "AssociatedFile", name=b.CreateString(name),
                  description=b.CreateString(description), type=kind)


def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _floats(b: flatbuffers.Builder, values: list[float]) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype="<f4"))


def _stats(b: flatbuffers.Builder, low: float, high: float) -> int:
    return _table(b, "Stats", max=_floats(b, [high]), min=_floats(b, [low]))


# --------------------------------------------------------------------- associated files
def _with_archive(flat: bytes, files: dict[str, bytes]) -> bytes:
    """``flat`` followed by an uncompressed zip of ``files`` (offsets from the file's start).

    The archive is written after zeros as long as ``flat`` (weights could look like a
    zip's end record to ``zipfile``'s append mode), then put after ``flat``.
    """
    stream = io.BytesIO()
    stream.write(bytes(len(flat)))
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return flat + stream.getvalue()[len(flat):]
