"""What the format modules share within one `graft export` run; each piece is made once, lazily."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

from graft import bundle
from graft.errors import ExportError
from graft.exporters.options import ExportOptions


class Context:
    """The bundle, its manifest, the options, and lazily made shared pieces (Keras model,
    calibration set, float32 ONNX conversion) that several targets reuse."""

    def __init__(self, bundle_dir: str | Path, options: ExportOptions):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = bundle.read_manifest(self.bundle_dir)
        self.options = options.check()
        self.size = int(self.manifest["preprocessing"]["size"][0])
        self.work = Path(tempfile.mkdtemp(prefix="graft-export-"))
        self.excluded: dict[str, list[str]] = {}   # set by the auto-exclude search
        self.strict = False                         # judge points, not intervals (budgets.py)
        self._cache: dict = {}

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def once(self, key, make):
        """``make()`` the first time ``key`` is asked for, the same object after."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def keras_model(self):
        from graft.exporters.parity import load_keras

        return self.once("keras", lambda: load_keras(self.bundle_dir))

    def calibration(self):
        from graft.exporters.calibration import calibration_set

        options = self.options
        return self.once("calibration", lambda: calibration_set(
            self.bundle_dir, options.calibration_size, options.seed, options.data_root))

    def onnx_proto(self):
        """A fresh copy of the float32 ONNX conversion (converted once)."""
        from graft.exporters.onnx import convert

        proto = self.once("onnx_proto", lambda: convert(self.keras_model(), self.size, self.options.opset))
        return copy.deepcopy(proto)

    def onnx_file(self) -> str:
        def make():
            path = self.work / "float32.onnx"
            path.write_bytes(self.onnx_proto().SerializeToString())
            return str(path)
        return self.once("onnx_file", make)

    def onnx_preprocessed(self) -> str:
        from graft.exporters.onnx import preprocess_for_quantization

        def make():
            path = self.work / "float32.pre.onnx"
            preprocess_for_quantization(Path(self.onnx_file()), path)
            return str(path)
        return self.once("onnx_pre", make)

    def onnx_input_name(self) -> str:
        return self.onnx_proto().graph.input[0].name

    def exclude_nodes(self, fmt: str) -> list[str]:
        """Nodes to keep in float for ``fmt``: from --exclude-nodes ('onnx:NAME', 'tflite:NAME'
        or a bare NAME for both) plus those chosen by the auto-exclude search."""
        from graft.exporters.registry import FORMATS

        names = []
        for item in self.options.exclude_nodes:
            prefix, sep, name = item.partition(":")
            if sep and prefix in FORMATS:
                if prefix == fmt:
                    names.append(name)
            else:
                names.append(item)
        if fmt == "onnx" and names:
            from graft.exporters.onnx import node_names

            known = set(node_names(Path(self.onnx_preprocessed())))
            unknown = [n for n in names if n not in known]
            if unknown:
                shown = ", ".join(sorted(known)[:6])
                raise ExportError(f"--exclude-nodes: no ONNX node named {unknown[0]!r} in the "
                                  f"pre-processed model; names look like: {shown}, ...")
        return list(dict.fromkeys(names + self.excluded.get(fmt, [])))
