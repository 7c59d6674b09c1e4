"""Read a .tflite file's metadata without TensorFlow: graft's manifest and the class labels.

A .tflite file exported by graft holds, in one file:

* the ``TFLITE_METADATA`` entry of the model's ``metadata`` list: a ModelMetadata
  flatbuffer of the public ``metadata_schema.fbs`` (file identifier ``M001``), the
  standard TFLite Metadata that MediaPipe Tasks and the TFLite Support library read
  (image properties, normalisation, a labels file for the output);
* the ``graft.manifest`` entry: graft's portable manifest as UTF-8 JSON (files
  exported before standard metadata was added carry only this one);
* after the flatbuffer, an uncompressed zip archive of the associated files that
  the metadata names: ``labels.txt`` (one label per line, in output order) and
  ``graft.json`` (the same manifest, for tools that only see associated files).

The TFLite model is read with the schema module that ai-edge-litert ships; the
metadata flatbuffer with ``flatbuffers`` and the field order of
``metadata_schema.fbs`` below (MediaPipe ships a module generated from that schema,
but it is far too heavy a dependency for the runtime; tflite-support is unmaintained).
"""

from __future__ import annotations

import io
import struct
import zipfile

from flatbuffers import encode, number_types, table, util

from graft.bundle import METADATA_KEY, parse_manifest
from graft.errors import BundleError

TFLITE_METADATA = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "graft.json"
TENSOR_AXIS_LABELS = 2  # AssociatedFileType

# Field order (a prefix of each table) of the metadata_schema.fbs tables graft writes
# and reads; a union field takes two slots: ``<name>_type``, then its value. graft
# writes schema 1.0.0 fields only.
FIELDS = {
    "ModelMetadata": ("name", "description", "version", "subgraph_metadata", "author",
                      "license", "associated_files", "min_parser_version"),
    "SubGraphMetadata": ("name", "description", "input_tensor_metadata", "output_tensor_metadata",
                         "associated_files", "input_process_units", "output_process_units"),
    "TensorMetadata": ("name", "description", "dimension_names", "content", "process_units",
                       "stats", "associated_files"),
    "Content": ("content_properties_type", "content_properties", "range"),
    "ImageProperties": ("color_space", "default_size"),
    "ImageSize": ("width", "height"),
    "FeatureProperties": (),
    "ProcessUnit": ("options_type", "options"),
    "NormalizationOptions": ("mean", "std"),
    "Stats": ("max", "min"),
    "AssociatedFile": ("name", "description", "type", "locale", "version"),
}
_LIMIT = 4096  # more list entries than this in a metadata vector means a damaged file


def slot(table_name: str, field: str) -> int:
    """The vtable offset of a field of a metadata_schema.fbs table."""
    return 4 + 2 * FIELDS[table_name].index(field)


def read_manifest(data: bytes, source: str = "model") -> dict | None:
    """graft's manifest carried by a .tflite file, or None if it carries none.

    Args:
        data: the whole file's bytes (flatbuffer and any appended archive).
        source: the file's name, for error messages.

    Returns:
        The manifest, checked by ``graft.bundle.parse_manifest``, or None.

    Raises:
        BundleError: the file is damaged or its manifest is invalid.
    """
    payload = metadata_buffers(data, source).get(METADATA_KEY)
    if payload is None:
        payload = associated_files(data, source).get(MANIFEST_FILE)
    return None if payload is None else parse_manifest(payload, source)


def read_labels(data: bytes, source: str = "model") -> list[str] | None:
    """The output's labels, in index order, from the standard metadata; None if it has none.

    Raises:
        BundleError: the file is damaged, or its metadata names a labels file the
            file does not hold (it was rewritten after export).
    """
    metadata = metadata_buffers(data, source).get(TFLITE_METADATA)
    if metadata is None:
        return None
    name = _labels_name(metadata, source)
    if name is None:
        return None
    files = associated_files(data, source)
    if name not in files:
        raise BundleError(f"{source}: the metadata names {name!r} but the file holds no such "
                          "associated file (rewriting a .tflite drops them); re-run `graft export`")
    try:
        text = files[name].decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{source}: {name} is not UTF-8 text; re-run `graft export`") from None
    return [line.rstrip("\r") for line in text.rstrip("\n").split("\n")] if text else []


def metadata_buffers(data: bytes, source: str = "model") -> dict[str, bytes]:
    """Every named entry of the model's ``metadata`` list, as {name: buffer bytes}."""
    from ai_edge_litert.schema_py_generated import Model

    data = bytes(data)
    if len(data) < 8 or not Model.ModelBufferHasIdentifier(data, 0):
        raise BundleError(f"{source}: not a TFLite flatbuffer (no {MODEL_IDENTIFIER.decode()} "
                          "identifier); export the model again with `graft export`")
    try:
        model = Model.GetRootAs(data, 0)
        if model.MetadataLength() > _LIMIT:
            raise ValueError("metadata list too long")
        found = {}
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() is not None:
                found[entry.Name().decode()] = _buffer(data, model, entry.Buffer())
        return found
    except (struct.error, IndexError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise _damaged(source, "TFLite metadata", exc) from None


def _buffer(data: bytes, model, index: int) -> bytes:
    if not 0 <= index < model.BuffersLength():
        raise IndexError(f"buffer {index} out of range")
    buffer = model.Buffers(index)
    if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
        return data[buffer.Offset():buffer.Offset() + buffer.Size()]
    return b"" if buffer.DataIsNone() else buffer.DataAsNumpy().tobytes()


MAX_ASSOCIATED_BYTES = 16 * 1024 * 1024  # labels and a manifest; anything bigger is not ours


def associated_files(data: bytes, source: str = "model") -> dict[str, bytes]:
    """The files of the zip archive appended to the flatbuffer ({} when there is none).

    Only stored (uncompressed) entries of a sane size are read, as the TFLite Metadata
    format and MediaPipe require, so a hostile file cannot expand into memory.
    """
    stream = io.BytesIO(bytes(data))
    if not zipfile.is_zipfile(stream):
        return {}
    try:
        with zipfile.ZipFile(stream) as archive:
            entries = [info for info in archive.infolist() if not info.is_dir()]
            for info in entries:
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_ASSOCIATED_BYTES:
                    raise BundleError(f"{source}: the associated file {info.filename!r} is compressed or "
                                      f"larger than {MAX_ASSOCIATED_BYTES} bytes; TFLite metadata files "
                                      "are stored uncompressed, re-run `graft export`")
            return {info.filename: archive.read(info) for info in entries}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise _damaged(source, "archive of associated files", exc) from None


def _labels_name(metadata: bytes, source: str) -> str | None:
    """The name of the first TENSOR_AXIS_LABELS file of the first output tensor."""
    if len(metadata) < 8 or not util.BufferHasIdentifier(metadata, 0, METADATA_IDENTIFIER):
        raise BundleError(f"{source}: TFLITE_METADATA is not a metadata flatbuffer "
                          f"({METADATA_IDENTIFIER.decode()}); re-run `graft export`")
    try:
        root = table.Table(metadata, encode.Get(number_types.UOffsetTFlags.packer_type, metadata, 0))
        subgraphs = _tables(root, slot("ModelMetadata", "subgraph_metadata"))
        outputs = _tables(subgraphs[0], slot("SubGraphMetadata", "output_tensor_metadata")) if subgraphs else []
        files = _tables(outputs[0], slot("TensorMetadata", "associated_files")) if outputs else []
        for file in files:
            kind = file.GetSlot(slot("AssociatedFile", "type"), 0, number_types.Int8Flags)
            name = _string(file, slot("AssociatedFile", "name"))
            if kind == TENSOR_AXIS_LABELS and name:
                return name
        return None
    except (struct.error, IndexError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise _damaged(source, "TFLITE_METADATA", exc) from None


def _tables(parent: table.Table, offset: int) -> list[table.Table]:
    """The tables of a vector-of-tables field."""
    field = parent.Offset(offset)
    if not field:
        return []
    count = parent.VectorLen(field)
    if count > _LIMIT:
        raise ValueError("vector too long")
    start = parent.Vector(field)
    return [table.Table(parent.Bytes, parent.Indirect(start + 4 * i)) for i in range(count)]


def _string(parent: table.Table, offset: int) -> str | None:
    field = parent.Offset(offset)
    return parent.String(field + parent.Pos).decode() if field else None


def _damaged(source: str, what: str, exc: BaseException) -> BundleError:
    outside = isinstance(exc, (struct.error, IndexError))
    reason = "an offset points outside the file" if outside else type(exc).__name__
    return BundleError(f"{source}: the {what} cannot be read ({reason}); "
                       "the file is damaged, re-run `graft export`")
