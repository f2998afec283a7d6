"""Tests for leader.store.EmbeddingStore and import_npz."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from leader.store import EmbeddingStore, import_npz


def rand(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_roundtrip_layout_and_reopen(tmp_path):
    path = tmp_path / "store"
    store = EmbeddingStore.create(path, {"e_da": 8, "disease": 4}, meta={"model": "tiny"})
    ids = [f"nih/{i:03d}" for i in range(5)]
    a, b = rand(5, 8), rand(5, 4, seed=1)
    assert store.append(ids, {"e_da": a, "disease": b}) == 5
    assert len(store) == 5 and store.ids == ids and store.dims == {"e_da": 8, "disease": 4}
    np.testing.assert_array_equal(store.get(["nih/003", "nih/001", "nih/003"], "e_da"), a[[3, 1, 3]])
    got_ids, values = store.load("disease")
    assert got_ids == ids and values.dtype == np.float32
    np.testing.assert_array_equal(values, b)
    contains = store.contains(["nih/000", "nope"])
    assert contains.dtype == np.bool_ and contains.tolist() == [True, False]

    meta = json.loads((path / "meta.json").read_text())
    assert meta["keys"] == {"e_da": 8, "disease": 4} and meta["dtype"] == "float32"
    assert meta["meta"] == {"model": "tiny"}
    index = pd.read_parquet(path / "index.parquet")
    assert list(index.columns) == ["id", "shard", "row"] and index["id"].tolist() == ids
    assert (path / "shards" / "shard-00000.safetensors").is_file()
    assert not [p for p in path.rglob("*.tmp")]

    again = EmbeddingStore.open(path)
    assert again.ids == ids and again.meta == {"model": "tiny"}
    np.testing.assert_array_equal(again.get(ids, "e_da"), a)
    reopened = EmbeddingStore.create(path, {"e_da": 8, "disease": 4})
    assert len(reopened) == 5


def test_create_conflicts(tmp_path):
    path = tmp_path / "s"
    EmbeddingStore.create(path, {"embedding": 8}, meta={"model": "a"})
    with pytest.raises(ValueError, match="16"):
        EmbeddingStore.create(path, {"embedding": 16})
    with pytest.raises(ValueError, match="float16"):
        EmbeddingStore.create(path, {"embedding": 8}, dtype="float16")
    with pytest.raises(ValueError, match="model"):
        EmbeddingStore.create(path, {"embedding": 8}, meta={"model": "b"})
    with pytest.raises(FileExistsError):
        EmbeddingStore.create(path, {"embedding": 8}, exist_ok=False)
    with pytest.raises(ValueError):
        EmbeddingStore.create(tmp_path / "t", {"embedding": 0})
    with pytest.raises(FileNotFoundError):
        EmbeddingStore.open(tmp_path / "missing")
    with pytest.raises(TypeError):
        EmbeddingStore(path, {"embedding": 8}, "float32", {})


def test_append_validation(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 4})
    store.append(["a", "b"], {"embedding": rand(2, 4)})
    with pytest.raises(ValueError, match="'a'"):
        store.append(["a", "c"], {"embedding": rand(2, 4)})
    with pytest.raises(ValueError, match="duplicate"):
        store.append(["c", "c"], {"embedding": rand(2, 4)})
    with pytest.raises(ValueError, match=r"'embedding'.*\(2, 4\).*\(2, 3\)"):
        store.append(["c", "d"], {"embedding": rand(2, 3)})
    with pytest.raises(ValueError, match="missing"):
        store.append(["c"], {"other": rand(1, 4)})
    bad = rand(2, 4)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="'d'"):
        store.append(["c", "d"], {"embedding": bad})
    with pytest.raises(TypeError):
        store.append([1], {"embedding": rand(1, 4)})
    # skip_existing makes re-runs idempotent; torch tensors are accepted
    n = store.append(["a", "c"], {"embedding": torch.ones(2, 4)}, skip_existing=True)
    assert n == 1 and store.ids == ["a", "b", "c"]
    np.testing.assert_array_equal(store.get(["c"], "embedding"), np.ones((1, 4), np.float32))
    assert store.append(["a"], {"embedding": rand(1, 4)}, skip_existing=True) == 0
    assert len(EmbeddingStore.open(tmp_path / "s")) == 3


def test_get_missing_ids_keyerror(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 2})
    store.append(["x"], {"embedding": rand(1, 2)})
    missing = [f"m{i}" for i in range(7)]
    with pytest.raises(KeyError) as err:
        store.get(["x"] + missing, "embedding")
    msg = str(err.value)
    assert "7 of 8" in msg and "'m0'" in msg and "'m4'" in msg and "'m5'" not in msg
    with pytest.raises(KeyError, match="nokey"):
        store.get(["x"], "nokey")


def test_multiple_shards_insertion_order_and_float16(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 3}, dtype="float16")
    chunks = [rand(4, 3, seed=s) for s in range(3)]
    all_ids = []
    for s, chunk in enumerate(chunks):
        ids = [f"id{s}-{i}" for i in range(4)]
        all_ids += ids
        store.append(ids, {"embedding": chunk})
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    ids, values = EmbeddingStore.open(tmp_path / "s").load("embedding")
    assert ids == all_ids and values.dtype == np.float32
    np.testing.assert_allclose(values, np.concatenate(chunks), atol=2e-3)
    mixed = store.get(["id2-3", "id0-0", "id1-2"], "embedding")
    np.testing.assert_allclose(mixed, np.stack([chunks[2][3], chunks[0][0], chunks[1][2]]), atol=2e-3)
    with pytest.raises(ValueError, match="float16"):
        store.append(["big"], {"embedding": np.full((1, 3), 1e6, np.float32)})


def test_empty_store(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", {"embedding": 5})
    ids, values = EmbeddingStore.open(tmp_path / "s").load("embedding")
    assert ids == [] and values.shape == (0, 5) and len(store) == 0


def test_crash_between_shard_and_index_leaves_ignored_orphan(tmp_path, monkeypatch):
    path = tmp_path / "s"
    store = EmbeddingStore.create(path, {"embedding": 4})
    first = rand(3, 4)
    store.append(["a", "b", "c"], {"embedding": first})

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash before the index write")

    monkeypatch.setattr(EmbeddingStore, "_write_index", crash)
    with pytest.raises(RuntimeError):
        store.append(["d", "e"], {"embedding": rand(2, 4, seed=5)})
    monkeypatch.undo()
    orphan = path / "shards" / "shard-00001.safetensors"
    assert orphan.is_file()  # the shard made it to disk, the index did not

    reopened = EmbeddingStore.open(path)
    assert reopened.ids == ["a", "b", "c"] and not reopened.contains(["d"]).any()
    np.testing.assert_array_equal(reopened.load("embedding")[1], first)

    # the next append reuses (overwrites) the orphan's number; a garbage orphan is fine too
    orphan.write_bytes(b"garbage from a torn write")
    second = rand(2, 4, seed=9)
    assert reopened.append(["d", "e"], {"embedding": second}) == 2
    final = EmbeddingStore.open(path)
    assert final.ids == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(final.get(["d", "e"], "embedding"), second)
    assert sorted(p.name for p in (path / "shards").iterdir()) == ["shard-00000.safetensors", "shard-00001.safetensors"]


def test_import_npz_both_layouts(tmp_path):
    vecs = rand(3, 6)
    ids = np.array(["p/1", "p/2", "p/3"])
    np.savez(tmp_path / "arrays.npz", ids=ids, embedding=vecs)
    assert import_npz(tmp_path / "s1", tmp_path / "arrays.npz") == 3
    assert import_npz(tmp_path / "s1", tmp_path / "arrays.npz") == 0  # re-run skips
    got_ids, got = EmbeddingStore.open(tmp_path / "s1").load("embedding")
    assert got_ids == ids.tolist()
    np.testing.assert_array_equal(got, vecs)

    np.savez(tmp_path / "keyed.npz", **{"x/a": vecs[0], "x/b": vecs[1][None, :]})
    assert import_npz(tmp_path / "s2", tmp_path / "keyed.npz", key="cxrfm") == 2
    store = EmbeddingStore.open(tmp_path / "s2")
    assert store.dims == {"cxrfm": 6}
    np.testing.assert_array_equal(store.get(["x/b"], "cxrfm"), vecs[1:2])

    np.savez(tmp_path / "ragged.npz", a=np.zeros(3), b=np.zeros(4))
    with pytest.raises(ValueError, match="width"):
        import_npz(tmp_path / "s3", tmp_path / "ragged.npz")
    np.savez(tmp_path / "obj.npz", ids=np.array(["a", 1], dtype=object), embedding=np.zeros((2, 2)))
    with pytest.raises(ValueError):
        import_npz(tmp_path / "s4", tmp_path / "obj.npz")
