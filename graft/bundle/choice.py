"""Which export of a bundle runs when nobody says: the best verified one, in a documented order.

``PREFERENCE`` lists format x precision from most to least preferred: exact
float32 ONNX first (onnxruntime runs it everywhere), then the smaller ONNX
files, then the TFLite files (which need LiteRT). Only a row whose status is
``ok`` (checked against Keras and within its budget) is picked by default; when
no row is verified, the best unverified one is picked and the reason says so.
A flagged file is never picked by default: it runs only when asked for by name
(``--artifact``), and the caller warns.
"""

from __future__ import annotations

from typing import NamedTuple

from graft.errors import BundleError

PREFERENCE = (("onnx", "float32"), ("onnx", "int8"), ("onnx", "dynamic"), ("onnx", "float16"),
              ("tflite", "float32"), ("tflite", "int8"), ("tflite", "dynamic"), ("tflite", "float16"))
FORMATS = ("onnx", "tflite")


class Choice(NamedTuple):
    """The export row picked, its 'FORMAT:PRECISION' key, and why it was picked."""

    row: dict
    key: str
    reason: str


def parse_artifact(artifact: str) -> tuple[str, str]:
    """'onnx' -> ('onnx', 'float32'); 'tflite:int8' -> ('tflite', 'int8')."""
    fmt, _, precision = artifact.strip().partition(":")
    return fmt, precision or "float32"


def key_of(row: dict) -> str:
    return f"{row.get('format')}:{row.get('precision')}"


def listing(manifest: dict) -> str:
    """'onnx:float32 (ok), tflite:int8 (flagged)', or 'none'."""
    rows = manifest.get("exports") or []
    return ", ".join(f"{key_of(r)} ({r.get('status', 'unverified')})" for r in rows) or "none"


def choose_export(manifest: dict, artifact: str | None = None, runnable=FORMATS,
                  where: str = "the bundle") -> Choice:
    """The export to run: ``artifact`` when given, else the best verified one.

    Args:
        manifest: the bundle's graft.json.
        artifact: FORMAT[:PRECISION] asked for by name, or None for the default.
        runnable: formats this runtime can run (a missing LiteRT leaves out tflite).
        where: the bundle, for messages.

    Raises:
        BundleError: no such export, or none that may be picked by default.
    """
    rows = [r for r in manifest.get("exports") or [] if isinstance(r, dict)]
    if artifact:
        fmt, precision = parse_artifact(artifact)
        row = next((r for r in rows if (r.get("format"), r.get("precision")) == (fmt, precision)), None)
        if row is None:
            raise BundleError(f"{where}: --artifact {artifact}: no {fmt}:{precision} export; "
                              f"exports: {listing(manifest)}")
        return Choice(row, key_of(row), "asked for by name")
    if not rows:
        raise BundleError(f"{where}: no exports to run; run `graft export` on the bundle first")
    rank = {key: i for i, key in enumerate(PREFERENCE)}

    def position(r: dict) -> int:
        return rank.get((r.get("format"), r.get("precision")), len(rank))

    ranked = sorted((r for r in rows if r.get("format") in runnable), key=position)
    for status, reason in (("ok", "the best verified export"),
                           ("unverified", "the best export, NOT verified against Keras (run `graft verify`)")):
        found = [r for r in ranked if r.get("status", "unverified") == status]
        if found:
            better = [key_of(r) for r in ranked if position(r) < position(found[0])]
            if better:
                reason += f"; passed over: {', '.join(better)}"
            return Choice(found[0], key_of(found[0]), reason)
    skipped = sorted({r.get("format") for r in rows} - set(runnable))
    hint = f" ({', '.join(skipped)} needs a runtime that is not installed)" if skipped else ""
    raise BundleError(f"{where}: no export may run by default{hint}; exports: {listing(manifest)}; "
                      "a flagged file runs only when named with --artifact FORMAT:PRECISION")
