from click.testing import CliRunner

from graft import bundle
from graft.cli import cli


def test_demo_runs_offline_end_to_end(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "try: graft predict"):
        assert step in result.output
    manifest = bundle.read_manifest(tmp_path / "demo" / "bundle")
    assert manifest["labels"] == [f"digit_{d}" for d in range(5, 10)]
    assert manifest["metrics"]["accuracy"] >= 0.8  # transfer from digits 0-4 to 5-9
    assert [row["path"] for row in manifest["dataset"]["skipped"]] == ["digit_7/damaged.jpg"]
    row = bundle.find_export(manifest, "onnx", "float32")
    assert row["parity"]["passed"] and (tmp_path / "demo" / "bundle" / row["path"]).is_file()
