"""Augmentation: seeded Keras preprocessing layers, cached views for the head, option checks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

from graft import bundle
from graft.builder.augment import Augmenter, AugmentSpec, seed_of, view_name
from graft.builder.build import BuildOptions, build_bundle
from graft.cli import cli
from graft.errors import GraftError


def picture(seed: int = 0, size: int = 32) -> np.ndarray:
    """An image with structure (a gradient and a bright corner), so transforms show."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size)[None, :, None].repeat(size, 0).repeat(3, 2)
    image = ramp + rng.normal(0, 10, (size, size, 3))
    image[:6, :6] = 250
    return np.clip(image, 0, 255).astype(np.uint8)


def test_a_view_depends_only_on_the_image_and_its_seed():
    augment = Augmenter(AugmentSpec())
    images = [picture(i) for i in range(8)]
    alone = [augment(image, seed_of("sha", i)) for i, image in enumerate(images)]
    with ThreadPoolExecutor(4) as pool:  # any thread, any order
        threaded = list(pool.map(lambda i: augment(images[i], seed_of("sha", i)), reversed(range(8))))[::-1]
    assert all(np.array_equal(a, b) for a, b in zip(alone, threaded))
    assert all(a.dtype == np.uint8 and a.shape == (32, 32, 3) for a in alone)
    assert not np.array_equal(alone[0], images[0])  # it augments
    assert not np.array_equal(augment(images[0], 1), augment(images[0], 2))
    batch = augment(np.stack(images), 7)  # a batch: one seed draws a transform per image
    assert batch.shape == (8, 32, 32, 3) and np.array_equal(batch, augment(np.stack(images), 7))


def test_flips_are_optional():
    image = picture()
    mirror = image[:, ::-1]
    flips = Augmenter(AugmentSpec(flip=True, zoom=0, rotation=0, brightness=0, contrast=0))
    outcomes = [flips(image, seed) for seed in range(16)]
    assert all(np.array_equal(o, image) or np.array_equal(o, mirror) for o in outcomes)
    assert sum(np.array_equal(o, mirror) for o in outcomes) in range(2, 15)  # both occur
    names = [layer.name for layer in AugmentSpec().layers()]
    assert names == ["augment_flip", "augment_rotation", "augment_zoom", "augment_shift",
                     "augment_brightness", "augment_contrast"]
    assert "augment_flip" not in [layer.name for layer in AugmentSpec(flip=False).layers()]
    off = AugmentSpec(flip=False, zoom=0, rotation=0, brightness=0, contrast=0)
    assert off.identity and np.array_equal(Augmenter(off)(image, 3), image)
    assert AugmentSpec(flip=False).digest() != AugmentSpec().digest()


@pytest.mark.parametrize("overrides, message", [
    ({"fine_tune": -1}, "--fine-tune must be an integer of at least 0; received -1"),
    ({"fine_tune": 2, "fine_tune_lr": 0.0}, "--fine-tune-lr must be a positive number; received 0.0"),
    ({"fine_tune": 2, "fine_tune_epochs": 0}, "--fine-tune-epochs must be an integer of at least 1"),
    ({"augment_views": 65}, "--augment-views 65: at most 64 views per image"),
    ({"fine_tune_lr": 1e-3}, "apply to the fine-tuning stage; add --fine-tune N or leave them out"),
    ({"augment": False}, "apply to the fine-tuning stage; add --fine-tune N"),
    ({"zoom": 0.2}, "set the augmentation of --augment-views and --fine-tune; add one or leave them out"),
    ({"fine_tune": 1, "augment": False, "flip": False}, "set the augmentation of --augment-views"),
    ({"augment_views": 2, "zoom": 0.9}, "--zoom must be a number in 0..0.5; received 0.9"),
    ({"augment_views": 2, "flip": False, "zoom": 0, "rotation": 0, "brightness": 0, "contrast": 0},
     "--augment-views 2 with every augmentation off would repeat the images"),
])
def test_bad_fine_tuning_and_augmentation_options_are_refused(overrides, message):
    with pytest.raises(GraftError, match=message.replace("(", r"\(").replace(".", r"\.")):
        BuildOptions(**overrides).check()


def test_good_options_pass():
    BuildOptions(fine_tune=3, fine_tune_lr=1e-5, augment=False).check()
    BuildOptions(augment_views=2, flip=False, zoom=0.2).check()


def test_cli_defaults_match_the_library():
    from graft.builder import finetune
    from graft.cli.build import build

    defaults = {p.name: p.default for p in build.params}
    for field in ("fine_tune", "fine_tune_lr", "fine_tune_epochs", "augment", "augment_views", "flip",
                  "zoom", "rotation", "brightness", "contrast"):
        assert defaults[field] == getattr(BuildOptions(), field), field
    assert defaults["fine_tune_lr"] == finetune.DEFAULT_LR


def test_cached_views_train_the_head(tmp_path, dataset, source_model):
    from graft.builder.backbones import load_backbone
    from graft.builder.features import FeatureCache, content_sha, read_pixels

    cache = tmp_path / "cache"
    options = dict(backbone=str(source_model), epochs=3, lr=1e-2, progress=False, cache_dir=str(cache),
                   augment_views=2)
    manifest = build_bundle(dataset, tmp_path / "a", BuildOptions(**options))
    head = manifest["training"]["stages"][0]
    train = manifest["dataset"]["split_counts"]["train"]
    settings = head["settings"]
    assert settings["augment_views"] == 2 and settings["augmentation"]["flip"] is True
    assert settings["views"] == {**settings["views"], "made": 2 * train, "extracted": 2 * train,
                                 "cache_hits": 0, "failed": 0}
    assert len(manifest["training"]["stages"]) == 1
    # A view's vector is the backbone's features of that augmented image, whatever the build.
    backbone = load_backbone(str(source_model))
    spec, contract = AugmentSpec(), manifest["preprocessing"]
    tag = manifest["dataset"]["extraction"]["extractor"]
    folder = next(p for p in (cache / "features" / backbone.cache_key).iterdir() if p.name.startswith(tag))
    features = FeatureCache(cache, backbone.cache_key, contract, folder.name)
    train_rows = [r for r in bundle.read_splits(tmp_path / "a")["samples"] if r["split"] == "train"][:3]
    shas = [content_sha(dataset / row["path"]) for row in train_rows]
    keys = [features.key(sha, view=view_name(settings["digest"], 1)) for sha in shas]
    vectors = features.store.index().rows(keys).take(np.arange(len(keys)))
    augment = Augmenter(spec)
    pixels = np.stack([augment(read_pixels(dataset / r["path"], sha, contract), seed_of(sha, 1))
                       for r, sha in zip(train_rows, shas)]).astype(np.float32)
    np.testing.assert_allclose(vectors, backbone.model.predict(pixels, verbose=0), atol=1e-5)
    # A rebuild reuses every view; new settings make new ones; only training images get views.
    again = build_bundle(dataset, tmp_path / "b", BuildOptions(**options))
    views = again["training"]["stages"][0]["settings"]["views"]
    assert (views["cache_hits"], views["extracted"]) == (2 * train, 0)
    assert again["training"]["stages"][0]["history"] == head["history"]
    other = build_bundle(dataset, tmp_path / "c", BuildOptions(**options, zoom=0.2))
    views = other["training"]["stages"][0]["settings"]["views"]
    assert (views["cache_hits"], views["extracted"]) == (0, 2 * train)


def test_augment_views_through_the_cli(tmp_path, dataset, source_model):
    result = CliRunner().invoke(cli, ["build", str(dataset), "-o", str(tmp_path / "b"), "--backbone",
                                      str(source_model), "--epochs", "2", "--augment-views", "1",
                                      "--no-flip", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    settings = bundle.read_manifest(tmp_path / "b")["training"]["stages"][0]["settings"]
    assert settings["augment_views"] == 1 and settings["augmentation"]["flip"] is False
    result = CliRunner().invoke(cli, ["build", str(dataset), "-o", str(tmp_path / "c"), "--no-flip"])
    assert result.exit_code == 2
    assert "--no-flip, --zoom, --rotation, --brightness and --contrast set the augmentation" in result.output
