"""`graft export` and `graft verify`."""

from __future__ import annotations

import click

from graft.errors import CheckFailed

FORMAT_CHOICE = click.Choice(["onnx", "tflite", "all"])
PRECISIONS = ("float32", "float16", "dynamic", "int8", "all")


def _precisions(ctx, param, value: tuple[str, ...]) -> list[str]:
    """--precision may repeat and take comma-separated names."""
    names = [name.strip() for item in value for name in item.split(",") if name.strip()]
    bad = [name for name in names if name not in PRECISIONS]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not one of {', '.join(PRECISIONS)}")
    return names or ["float32"]


def budget_options(command):
    """Budget and check flags shared by `graft export` and `graft verify` (percent / points)."""
    flags = [
        click.option("--strict", is_flag=True, help="Judge the measured figures against the budgets "
                     "(default: a budget breaks only when the whole 95% interval is past it)."),
        click.option("--agreement-data", multiple=True, type=click.Path(exists=True, path_type=str),
                     help="More images (folder, file or .txt/.csv list; labels not needed) to measure "
                     "agreement with Keras on; repeatable."),
        click.option("--check-images", type=click.IntRange(1), default=2000, show_default=True,
                     help="At most this many images for the checks; past it a seeded sample "
                     "(held-out images first), stated in the output."),
        click.option("--f32-min-agreement", type=click.FloatRange(0, 100), default=None,
                     help="float32: minimum top-1 agreement with Keras, % [100]."),
        click.option("--f32-max-diff", type=click.FloatRange(0), default=None,
                     help="float32: maximum |dprob| vs Keras [1e-4]."),
        click.option("--f16-min-agreement", type=click.FloatRange(0, 100), default=None,
                     help="float16: minimum top-1 agreement, % [99.5]."),
        click.option("--int8-min-agreement", type=click.FloatRange(0, 100), default=None,
                     help="int8 and dynamic: minimum top-1 agreement, % [98]."),
        click.option("--int8-max-drop", type=click.FloatRange(0, 100), default=None,
                     help="int8 and dynamic: maximum top-1 accuracy drop, points [1.0]."),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def check_settings(strict, agreement_data, check_images, **budget_flags) -> dict:
    """The keyword arguments of export_bundle / verify_bundle that the shared flags set."""
    return {"budgets": budgets(**budget_flags), "strict": strict, "agreement_data": agreement_data,
            "check_limit": check_images}


def budgets(f32_min_agreement, f32_max_diff, f16_min_agreement, int8_min_agreement, int8_max_drop) -> dict:
    pairs = {("float32", "min_agreement"): f32_min_agreement, ("float32", "max_abs_diff"): f32_max_diff,
             ("float16", "min_agreement"): f16_min_agreement,
             ("int8", "min_agreement"): int8_min_agreement, ("int8", "max_accuracy_drop"): int8_max_drop}
    found: dict = {}
    for (family, key), value in pairs.items():
        if value is not None:
            found.setdefault(family, {})[key] = value if key == "max_abs_diff" else value / 100
    return found


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="onnx", show_default=True)
@click.option("--precision", "precisions", multiple=True, callback=_precisions,
              help="float32 (default), float16, dynamic (int8 weights), int8 (static, calibrated) "
              "or all; repeat or separate with commas.")
@click.option("--opset", type=click.IntRange(13, 18), default=17, show_default=True,
              help="ONNX opset of the conversion (tf2onnx); static int8 files move to 19.")
@click.option("--calibration-size", type=click.IntRange(1, 100000), default=200, show_default=True,
              help="int8: calibration images, drawn class-balanced from the training split.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="ONNX int8 activation calibration "
              "(TFLite calibrates with min/max only).")
@click.option("--io-dtype", type=click.Choice(["uint8", "int8", "float32"]), default="uint8",
              show_default=True, help="TFLite int8: dtype of the model's input and output. MediaPipe "
              "Tasks and Android apps take uint8; MediaPipe refuses int8.")
@click.option("--exclude-nodes", default="", help="int8: comma-separated nodes to keep in float "
              "(ONNX node names, TFLite tensor names; prefix onnx: or tflite: to target one format).")
@click.option("--auto-exclude", is_flag=True, help="int8: when the budget breaks, keep the worst "
              "layers in float until it holds, and report what that cost.")
@click.option("--no-verify", is_flag=True, help="Skip the check against Keras.")
@click.option("--data", "data_root", type=click.Path(path_type=str), default=None,
              help="The dataset's root, if it moved since `graft build` (for the checks).")
@budget_options
def export(bundle_dir, fmt, precisions, opset, calibration_size, calibration_method, io_dtype,
           exclude_nodes, auto_exclude, no_verify, data_root, **budget_flags):
    """Export a bundle's model to ONNX / TFLite at each precision and check each against Keras."""
    from graft.exporters import registry
    from graft.exporters.export import export_bundle
    from graft.exporters.options import ExportOptions
    from graft.quiet import import_tensorflow

    import_tensorflow()  # without its C++ start-up lines (shown under --debug)
    options = ExportOptions(opset=opset, calibration_size=calibration_size,
                            calibration_method=calibration_method, io_dtype=io_dtype,
                            exclude_nodes=[n.strip() for n in exclude_nodes.split(",") if n.strip()],
                            auto_exclude=auto_exclude, data_root=data_root)
    from graft.cli.report import after_change

    try:
        export_bundle(bundle_dir, registry.select(fmt, precisions), options, verify_exports=not no_verify,
                      echo=click.echo, **check_settings(**budget_flags))
    except CheckFailed:
        after_change(bundle_dir)  # flagged rows are recorded: the report shows them
        raise
    after_change(bundle_dir)


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=str))
@click.option("--model-threads", type=click.IntRange(1, 256), default=None,
              help="Threads per engine: onnxruntime intra-op or LiteRT interpreter (default: all CPU cores).")
@click.option("--no-speed", is_flag=True, help="Skip the latency and throughput measurements.")
@click.option("--data", "data_root", type=click.Path(path_type=str), default=None,
              help="The dataset's root, if it moved since `graft build`.")
@budget_options
def verify(bundle_dir, model_threads, no_speed, data_root, **budget_flags):
    """Check every exported file against Keras (agreement on every usable image, accuracy on the
    held-out split, each with n and a 95% interval); print one table; exit 1 if a budget breaks."""
    from rich.console import Console
    from rich.table import Table

    from graft.exporters.verify import COLUMNS, REPORT_JSON, REPORT_MD, headline, table_cells, verify_bundle

    from graft.cli.report import after_change

    from graft.quiet import import_tensorflow

    import_tensorflow()
    settings = check_settings(**budget_flags)
    report = verify_bundle(bundle_dir, settings.pop("budgets"), data_root, model_threads, not no_speed, **settings)
    after_change(bundle_dir)
    click.echo(headline(report))
    table = Table(title=report["bundle"])
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i < 2 or i == len(COLUMNS) - 1 else "right")
    for row in report["rows"]:
        table.add_row(*table_cells(row))
    Console(width=200).print(table)
    click.echo(f"wrote {bundle_dir}/{REPORT_JSON} and {bundle_dir}/{REPORT_MD}")
    looser = [row for row in report["rows"] if row["passed"] and row.get("default_breaches")]
    for row in looser:
        click.echo(f"warning: {row['path']} passes only the looser budget given; it stays flagged "
                   f"in graft.json ({'; '.join(row['default_breaches'])})", err=True)
    failed = [row for row in report["rows"] if not row["passed"]]
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(report['rows'])} exports break their budget: "
                          + "; ".join(f"{r['path']} ({', '.join(r['breaches'])})" for r in failed))


COMMANDS = [export, verify]
