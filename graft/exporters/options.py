"""What `graft export` can be told, checked against the formats it applies to.

An option that none of the selected targets would use is refused with a clear
message instead of being silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graft.errors import GraftError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
IO_DTYPES = ("uint8", "int8", "float32")
DEFAULT_OPSET = 17


@dataclass
class ExportOptions:
    """Export settings. Defaults suit most models; int8 settings matter only for int8 targets.

    Attributes:
        opset: ONNX opset for tf2onnx.
        calibration_size: int8 calibration images, drawn class-balanced from the training split.
        calibration_method: ONNX int8 activation calibration (TFLite calibrates with min/max only).
        io_dtype: TFLite full-integer models' input and output dtype. uint8 is what
            MediaPipe Tasks and Android apps take; int8 is refused by MediaPipe.
        exclude_nodes: int8 nodes to keep in float ('onnx:NAME', 'tflite:NAME' or NAME).
        auto_exclude: when int8 breaks its budget, keep the worst layers in float until it holds.
        seed: calibration sampling seed.
        data_root: the dataset's new root if it moved since the build.
    """

    opset: int = DEFAULT_OPSET
    calibration_size: int = 200
    calibration_method: str = "minmax"
    io_dtype: str = "uint8"
    exclude_nodes: list[str] = field(default_factory=list)
    auto_exclude: bool = False
    seed: int = 0
    data_root: str | None = None

    def check(self) -> "ExportOptions":
        """Raise GraftError for values no export could use; return self."""
        if self.calibration_method not in CALIBRATION_METHODS:
            raise GraftError(f"--calibration-method {self.calibration_method!r} is not known; "
                             f"allowed: {', '.join(CALIBRATION_METHODS)}")
        if self.io_dtype not in IO_DTYPES:
            raise GraftError(f"--io-dtype {self.io_dtype!r} is not known; allowed: {', '.join(IO_DTYPES)}")
        if not isinstance(self.calibration_size, int) or self.calibration_size < 1:
            raise GraftError(f"--calibration-size must be a positive integer; "
                             f"received {self.calibration_size!r}")
        if not isinstance(self.opset, int) or not 13 <= self.opset <= 18:
            raise GraftError(f"--opset must be an integer in 13..18 (what tf2onnx converts to); "
                             f"received {self.opset!r}")
        return self

    def check_for(self, targets, verify: bool = True) -> "ExportOptions":
        """Refuse settings that none of ``targets`` (registry.Target) would use."""
        self.check()
        keys = {(t.format, t.precision) for t in targets}
        int8 = {fmt for fmt, precision in keys if precision == "int8"}
        if self.calibration_size != ExportOptions.calibration_size and not int8:
            raise GraftError("--calibration-size applies to int8 exports only; add --precision int8 "
                             "or leave it out")
        if self.data_root and not verify and not int8:
            raise GraftError("--data is where the checks and int8 calibration read images; with "
                             "--no-verify and no int8 export nothing reads it, leave it out")
        for item in self.exclude_nodes:
            prefix, sep, _ = item.partition(":")
            if sep and prefix in ("onnx", "tflite") and prefix not in int8:
                raise GraftError(f"--exclude-nodes {item}: no {prefix} int8 export is selected; add "
                                 f"--format {prefix} --precision int8 or drop the name")
        if self.calibration_method != "minmax" and "onnx" not in int8:
            raise GraftError(f"--calibration-method {self.calibration_method} applies to ONNX int8 "
                             "only (TFLite calibrates with min/max); add --format onnx --precision int8 "
                             "or leave it out")
        if self.io_dtype != "uint8" and "tflite" not in int8:
            raise GraftError(f"--io-dtype {self.io_dtype} applies to TFLite int8 only (ONNX files take "
                             "float32 pixels); add --format tflite --precision int8 or leave it out")
        if (self.exclude_nodes or self.auto_exclude) and not int8:
            flag = "--exclude-nodes" if self.exclude_nodes else "--auto-exclude"
            raise GraftError(f"{flag} applies to int8 exports only; add --precision int8 or leave it out")
        return self
