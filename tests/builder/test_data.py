import pytest

from graft.builder.data import check_class_counts, scan, split_of
from graft.errors import DataError


def test_scan_class_folders(dataset):
    samples = scan(dataset)
    labels = sorted({s.label for s in samples})
    assert labels == ["blue", "green", "red"]
    assert sum(s.label == "red" for s in samples) == 13  # 12 images + the corrupt file
    assert all(not s.rel.startswith("/") and s.rel.split("/")[0] == s.label for s in samples)


def test_scan_csv(tmp_path, dataset):
    csv = tmp_path / "labels.csv"
    rows = ["path,label"] + [f"{dataset / 'red' / f'{i:03d}.png'},warm" for i in range(3)] \
        + [f"{dataset / 'blue' / f'{i:03d}.png'},cold" for i in range(3)]
    csv.write_text("\n".join(rows) + "\n")
    samples = scan(csv)
    assert [s.label for s in samples] == ["warm"] * 3 + ["cold"] * 3
    (tmp_path / "bad.csv").write_text("only-one-column\n")
    with pytest.raises(DataError, match=r"bad.csv:1: expected 'path,label'"):
        scan(tmp_path / "bad.csv")


@pytest.mark.parametrize("layout,message", [
    ({}, "no class sub-folders"),
    ({"cats": []}, "no images found"),
    ({"cats": ["a.png", "b.png"]}, "single class \\('cats'\\)"),
])
def test_unusable_data_is_a_clear_error(tmp_path, layout, message):
    for folder, files in layout.items():
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).write_bytes(b"x")
    with pytest.raises(DataError, match=message):
        scan(tmp_path)


def test_missing_data_path(tmp_path):
    with pytest.raises(DataError, match="no such folder or CSV"):
        scan(tmp_path / "missing")


def test_split_is_deterministic_and_stable_when_data_grows():
    before = {f"cat/{i}.jpg": split_of(f"cat/{i}.jpg", 0.15, 0.15) for i in range(500)}
    after = {f"cat/{i}.jpg": split_of(f"cat/{i}.jpg", 0.15, 0.15) for i in range(1000)}
    assert all(after[key] == value for key, value in before.items())
    shares = {name: list(after.values()).count(name) / 1000 for name in ("train", "val", "test")}
    assert 0.6 < shares["train"] < 0.8 and 0.1 < shares["val"] < 0.2 and 0.1 < shares["test"] < 0.2


def test_class_count_check_names_the_class():
    check_class_counts({"a": {"train": 2, "val": 0, "test": 0}, "b": {"train": 1, "val": 1, "test": 0}}, [])
    skipped = [{"path": "b/x.jpg", "label": "b", "reason": "not a recognised image"}]
    with pytest.raises(DataError, match=r"class 'b' has 1 usable image.*b/x.jpg: not a recognised"):
        check_class_counts({"a": {"train": 5}, "b": {"train": 1}}, skipped)
    with pytest.raises(DataError, match="class 'a' has no image in the training split"):
        check_class_counts({"a": {"train": 0, "test": 3}, "b": {"train": 3}}, [])


@pytest.mark.parametrize("label", ["a|b", "tab\tinside"])
def test_labels_that_outputs_cannot_carry_are_refused(tmp_path, label):
    from graft.builder.data import scan

    csv = tmp_path / "data.csv"
    (tmp_path / "x.png").write_bytes(b"")
    import csv as csvmod

    with open(csv, "w", newline="") as fh:
        csvmod.writer(fh).writerows([["x.png", label], ["x.png", "fine"]])
    with pytest.raises(DataError, match="cannot be a label"):
        scan(csv)
