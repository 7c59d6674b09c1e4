"""Feature shards on disk, rows read back from them, and the head trained from them streamed."""

from __future__ import annotations

import numpy as np
import pytest

from graft.builder.features import feature_spread
from graft.builder.shards import ArrayRows, ShardStore, ShardWriter, rows_per_shard


def keys(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def test_writer_cuts_shards_and_the_index_finds_every_row(tmp_path):
    store = ShardStore(tmp_path / "ns")
    vectors = np.random.default_rng(0).normal(size=(150, 5)).astype(np.float32)
    writer = ShardWriter(store, dim=5, rows=64)
    for start in range(0, 150, 20):  # batches that do not line up with shards
        writer.add(keys(len(vectors[start:start + 20]), start), vectors[start:start + 20])
    writer.close()
    assert len(writer.written) == 3  # 64 + 64 + 22
    assert sorted(len(np.load(p)) for p in (tmp_path / "ns").glob("*.keys.npy")) == [22, 64, 64]
    index = store.index()
    assert len(index) == 150 and index.dim == 5
    order = np.random.default_rng(1).permutation(150)
    rows = index.rows([keys(150)[i] for i in order])
    assert rows.shards == 3 and len(rows) == 150
    np.testing.assert_array_equal(rows.take(np.arange(150)), vectors[order])
    np.testing.assert_array_equal(rows.subset([5, 0]).take([0, 1]), vectors[order[[5, 0]]])
    assert list(index.find(["f" * 64, keys(1, 3)[0]]) >= 0) == [False, True]


def test_damaged_shards_are_ignored(tmp_path):
    store = ShardStore(tmp_path)
    good = store.write(keys(4), np.ones((4, 3), np.float32))
    short = store.write(keys(4, 10), np.ones((4, 3), np.float32))
    lost = store.write(keys(4, 20), np.ones((4, 3), np.float32))
    data = (tmp_path / f"{short}.npy").read_bytes()
    (tmp_path / f"{short}.npy").write_bytes(data[:-8])     # torn write
    (tmp_path / f"{lost}.npy").unlink()                     # features gone, keys left
    (tmp_path / "shard-partial.npy").write_bytes(b"\x93NUMPY")  # no keys file: never complete
    index = store.index()
    assert index.names == [good] and len(index) == 4
    with pytest.raises(KeyError, match=keys(1, 10)[0]):
        index.rows(keys(1, 10))


def test_rows_per_shard_bounds_a_shard_to_its_bytes():
    assert rows_per_shard(1280) == (16 << 20) // (4 * 1280)
    assert rows_per_shard(10**7) == 64


def test_streamed_spread_equals_numpy(tmp_path):
    features = np.random.default_rng(2).normal(3.0, 0.5, size=(1000, 7)).astype(np.float32)
    store = ShardStore(tmp_path)
    writer = ShardWriter(store, 7, rows=128)
    writer.add(keys(1000), features)
    writer.close()
    rows = store.index().rows(keys(1000))
    expected = float(features.astype(np.float64).std(axis=0).mean())
    assert feature_spread(rows, chunk=96) == pytest.approx(expected, rel=1e-9)
    assert feature_spread(features) == pytest.approx(expected, rel=1e-9)
    assert np.isnan(feature_spread(features[:1]))


def test_batches_draw_each_epoch_from_the_seed():
    from graft.builder.batches import FeatureBatches

    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    first = FeatureBatches(ArrayRows(x), np.arange(10) % 2, 4, seed=3, class_weight={0: 2.0, 1: 0.5})
    again = FeatureBatches(ArrayRows(x), np.arange(10) % 2, 4, seed=3, class_weight={0: 2.0, 1: 0.5})
    assert first.num_batches == 3
    epoch0 = np.concatenate([first[i][0][:, 0] for i in range(3)])
    assert sorted(epoch0) == list(range(10)) and list(epoch0) != list(range(10))
    first.on_epoch_end()
    epoch1 = np.concatenate([first[i][0][:, 0] for i in range(3)])
    assert list(epoch1) != list(epoch0)
    np.testing.assert_array_equal(np.concatenate([again[i][0][:, 0] for i in range(3)]), epoch0)
    xb, yb, wb = first[0]
    np.testing.assert_array_equal(wb, np.where(yb == 0, 2.0, 0.5))
    plain = FeatureBatches(ArrayRows(x), np.zeros(10), 4)
    assert len(plain[2]) == 2 and list(plain[2][0][:, 0]) == [8, 9]


def test_head_trained_from_shards_equals_head_trained_from_arrays(tmp_path):
    """The streamed path (shards on disk) and the in-memory path give the same head."""
    import keras

    from graft.builder.head import predict_rows, train_head

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = (rng.normal(size=(120, 6)) + y[:, None]).astype(np.float32)
    store = ShardStore(tmp_path)
    writer = ShardWriter(store, 6, rows=50)
    writer.add(keys(120), x)
    writer.close()
    rows = store.index().rows(keys(120))
    heads = []
    for train in (x[:100], rows.subset(np.arange(100))):
        keras.utils.set_random_seed(0)
        head, stage = train_head(train, y[:100], (x[100:], y[100:]), 3, epochs=4, batch_size=16, lr=1e-2,
                                 dropout=0.2, patience=5, seed=7)
        heads.append((head, stage))
    (a, stage_a), (b, stage_b) = heads
    assert stage_a["history"] == stage_b["history"] and stage_a["epochs_run"] == 4
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(predict_rows(a, x, 3), predict_rows(b, rows, 3))
    assert predict_rows(a, x[:0], 3).shape == (0, 3)


def test_extraction_and_training_batches_hold_a_shard_not_the_dataset(tmp_path):
    """Peak traced memory stays flat while the features grow tenfold (5 MB -> 50 MB)."""
    import tracemalloc

    from graft.builder.batches import FeatureBatches
    from graft.builder.features import Item, extract_items

    dim = 4096

    def run(pixels):  # an extractor with wide features, cheap to compute
        return np.repeat(pixels.reshape(len(pixels), -1)[:, :1], dim, axis=1).astype(np.float32)

    def peak(count: int) -> int:
        store = ShardStore(tmp_path / f"n{count}")
        items = (Item(keys(1, i)[0], lambda i=i: np.full((4, 4, 3), i % 251, np.uint8)) for i in range(count))
        tracemalloc.start()
        failed = extract_items(items, run, ShardWriter(store, dim, rows=64), batch_size=16, threads=2)
        rows = store.index().rows(keys(count))
        assert failed == {} and feature_spread(rows, chunk=128) > 0
        batches = FeatureBatches(rows, np.arange(count) % 2, 32, seed=0)
        seen = sum(len(batches[i][0]) for i in range(batches.num_batches))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert seen == count and rows.take([count - 1])[0, 0] == (count - 1) % 251
        return top

    small, large = peak(300), peak(3000)
    assert large < small * 1.5 and large < 12 * 2**20, (small, large)
