"""A build killed at any moment leaves the old bundle whole (or the new one complete), and a
source model edited in place never reuses features cached for its old version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from graft import bundle
from graft.builder.build import BuildOptions, build_bundle

KILLER = textwrap.dedent('''
    import os, signal, sys
    import graft.bundle.files as files
    from graft.builder.build import BuildOptions, build_bundle

    data, out, source, cache, step, when = sys.argv[1:7]
    step, calls = int(step), [0]

    def killing(fn):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if when == "before" and calls[0] == step:
                os.kill(os.getpid(), signal.SIGKILL)
            result = fn(*args, **kwargs)
            if when == "after" and calls[0] == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper

    os.replace, files.exchange = killing(os.replace), killing(files.exchange)
    build_bundle(data, out, BuildOptions(backbone=source, epochs=4, lr=1e-2, progress=False,
                                         cache_dir=cache, overwrite=True))
    print("calls", calls[0])
''')


def build_killed(dataset, out, source_model, cache, step: int, when: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, str(dataset), str(out), str(source_model),
                           str(cache), str(step), when], capture_output=True, text=True, timeout=300)


def assert_whole(out, epochs: int) -> None:
    """graft.json, splits.json, model.keras and exports all belong to one build."""
    import keras

    manifest = bundle.read_manifest(out)
    assert manifest["training"]["hyperparameters"]["epochs"] == epochs
    rows = bundle.read_splits(out)["samples"]
    assert len(rows) == manifest["dataset"]["usable"]
    model = keras.saving.load_model(out / bundle.KERAS_NAME, compile=False)
    assert model.output.shape[-1] == len(manifest["labels"])
    for row in manifest["exports"]:
        assert bundle.sha256_file(out / row["path"]) == row["sha256"]


def test_a_killed_rebuild_leaves_the_old_bundle_or_the_new_one(tmp_path, dataset, source_model):
    from graft.exporters.export import export_onnx

    cache, out = tmp_path / "cache", tmp_path / "colors"
    build_bundle(dataset, out, BuildOptions(backbone=str(source_model), epochs=3, lr=1e-2,
                                            progress=False, cache_dir=str(cache)))
    export_onnx(out)  # the old bundle has an export the rebuild must not strand
    shutil.copytree(out, tmp_path / "dry")  # a rebuild over an existing bundle, run to the end
    finished = build_killed(dataset, tmp_path / "dry", source_model, cache, 0, "never")
    calls = int(finished.stdout.split("calls")[-1])  # durable steps of a warm-cache build
    assert calls >= 4
    outcomes = set()
    for step, when in [(1, "before"), (calls - 1, "before"), (calls, "before"), (calls, "after")]:
        killed = build_killed(dataset, out, source_model, cache, step, when)
        assert killed.returncode == -9, killed.stderr[-500:]
        new = bundle.read_manifest(out)["training"]["hyperparameters"]["epochs"] == 4
        assert_whole(out, 4 if new else 3)
        outcomes.add(new)
        if new:  # a complete new bundle: put the old one back for the next kill point
            shutil.rmtree(out)
            shutil.copytree(tmp_path / "dry", out)
            manifest = bundle.read_manifest(out)
            manifest["training"]["hyperparameters"]["epochs"] = 3
            bundle.write_manifest(out, manifest)
    assert outcomes == {False, True}  # both kinds of survivor were seen
    build_bundle(dataset, out, BuildOptions(backbone=str(source_model), epochs=2, progress=False,
                                            cache_dir=str(cache), overwrite=True))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".colors.")]  # leftovers cleaned


def test_a_source_model_edited_in_place_gets_fresh_features(tmp_path, dataset):
    """Same file name, same weights, another Rescaling: the cached features must not be reused."""
    import keras
    import numpy as np

    def save_source(scale: float):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((24, 24, 3), name="image")
        x = keras.layers.Rescaling(scale)(inputs)
        x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
        x = keras.layers.GlobalAveragePooling2D(name="features")(x)
        keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x)).save(tmp_path / "source.keras")

    def build(name: str, cache) -> dict:
        options = BuildOptions(backbone=str(tmp_path / "source.keras"), epochs=5, progress=False,
                               cache_dir=str(cache))
        return build_bundle(dataset, tmp_path / name, options)

    save_source(1 / 255)
    build("first", tmp_path / "shared")
    save_source(1 / 127.5)                   # edited in place
    reused = build("again", tmp_path / "shared")
    fresh = build("fresh", tmp_path / "empty")
    assert reused["dataset"]["feature_cache_hits"] == 0
    assert reused["training"]["stages"][0]["history"] == fresh["training"]["stages"][0]["history"]
    assert np.isclose(reused["backbone"]["feature_spread"], fresh["backbone"]["feature_spread"])


def test_a_rebuild_waits_for_an_update_in_progress(tmp_path, dataset, source_model):
    """A build swaps the new bundle in under graft.json's lock, so an export or verify that is
    halfway through updating the old bundle never writes its old manifest into the new one."""
    cache, out = tmp_path / "cache", tmp_path / "colors"
    build_bundle(dataset, out, BuildOptions(backbone=str(source_model), epochs=3, lr=1e-2,
                                            progress=False, cache_dir=str(cache)))
    code = textwrap.dedent(f'''
        import fcntl, os
        real = fcntl.flock
        def flock(fd, op):
            if os.readlink(f"/proc/self/fd/{{fd}}") == {str(out / bundle.files.LOCK_NAME)!r}:
                print("waiting", flush=True)
            return real(fd, op)
        fcntl.flock = flock
        from graft.builder.build import BuildOptions, build_bundle
        build_bundle({str(dataset)!r}, {str(out)!r}, BuildOptions(backbone={str(source_model)!r}, epochs=4,
                     lr=1e-2, progress=False, cache_dir={str(cache)!r}, overwrite=True))
    ''')
    with bundle.updating(out) as manifest:
        builder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert builder.stdout.readline().strip() == "waiting"  # ready to swap, held back
        manifest["name"] = "edited by a command that was already running"
        assert builder.poll() is None
    assert builder.wait(timeout=300) == 0
    rebuilt = bundle.read_manifest(out)
    assert rebuilt["training"]["hyperparameters"]["epochs"] == 4 and rebuilt["name"] == "colors"
    assert_whole(out, 4)


def test_a_linked_bundle_is_rebuilt_where_it_lives(tmp_path, dataset, source_model):
    real, link = tmp_path / "store" / "colors", tmp_path / "colors"
    options = dict(backbone=str(source_model), epochs=2, progress=False, cache_dir=str(tmp_path / "cache"))
    build_bundle(dataset, real, BuildOptions(**options))
    link.symlink_to(real, target_is_directory=True)
    build_bundle(dataset, link, BuildOptions(**options, seed=1, overwrite=True))
    assert link.is_symlink() and bundle.read_manifest(link)["training"]["hyperparameters"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "colors", "store"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["colors"]
