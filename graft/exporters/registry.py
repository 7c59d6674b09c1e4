"""The one table of export targets: format x precision -> file name, exporter, budget.

Everything that loops over exports (``graft export``, ``graft verify``, the
tests) loops over ``TARGETS``, the product of ``FORMATS`` and ``PRECISIONS``: a
format is a name here and a module ``graft.exporters.<format>`` with one
``export_<precision>`` function per precision.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from graft.errors import GraftError

FORMATS = {"onnx": ".onnx", "tflite": ".tflite"}
# The same names everywhere: `graft export --precision`, `graft predict --artifact onnx:float16`,
# graft.json rows and file names.
PRECISIONS = ("float32", "float16", "dynamic", "int8")


@dataclass(frozen=True)
class Target:
    format: str
    precision: str
    budget: str            # which budget family applies: float32, float16 or int8
    exporter: str          # "module:function", imported only when used

    @property
    def key(self) -> str:
        return f"{self.format}:{self.precision}"

    @property
    def filename(self) -> str:
        return f"model.{self.precision}{FORMATS[self.format]}"

    def load(self) -> Callable:
        module, _, name = self.exporter.partition(":")
        return getattr(importlib.import_module(module), name)


_BUDGET = {"float32": "float32", "float16": "float16", "dynamic": "int8", "int8": "int8"}

TARGETS: dict[tuple[str, str], Target] = {
    (fmt, precision): Target(fmt, precision, _BUDGET[precision],
                             f"graft.exporters.{fmt}:export_{precision}")
    for fmt in FORMATS for precision in PRECISIONS
}


def select(formats: str | list[str] = "all", precisions: str | list[str] = "all") -> list[Target]:
    """Targets for ``--format`` and ``--precision`` values (each a name, a list or 'all')."""
    fmts = _expand(formats, list(FORMATS), "--format")
    chosen = _expand(precisions, list(PRECISIONS), "--precision")
    return [TARGETS[(f, p)] for f in fmts for p in chosen if (f, p) in TARGETS]


def _expand(value, allowed: list[str], flag: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if "all" in names:
        return list(allowed)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise GraftError(f"{flag} {bad[0]!r} is not known; allowed: {', '.join(allowed)}, all")
    return list(dict.fromkeys(names))


def target_of(row: dict) -> Target:
    key = (row.get("format"), row.get("precision"))
    if key not in TARGETS:
        raise GraftError(f"export {row.get('path')!r} has unknown format:precision "
                         f"{key[0]}:{key[1]}; allowed: {', '.join(t.key for t in TARGETS.values())}")
    return TARGETS[key]
